"""Migrates the database and creates the test users; prints their ids as JSON."""

import json

from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = __doc__

    def add_arguments(self, parser):
        parser.add_argument("--password", required=True, help="every test user's password")

    def handle(self, *args, password, **options):
        call_command("migrate", interactive=False, verbosity=0)
        editors, _ = Group.objects.get_or_create(name="editors")
        ids = {}
        for name in ["alice", "bob"]:
            user, _ = User.objects.get_or_create(username=name)
            user.set_password(password)
            user.save()
            ids[name] = str(user.pk)
        User.objects.get(username="alice").groups.add(editors)
        self.stdout.write(json.dumps(ids))
