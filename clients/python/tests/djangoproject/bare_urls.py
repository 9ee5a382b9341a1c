# A urls.py that forgot the include.
urlpatterns: list[object] = []
