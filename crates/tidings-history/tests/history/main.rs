//! Tests of tidings-history against a real `redis-server` and the in-memory
//! twin (one binary, so one link).

mod property;
mod redis;
mod suite;
mod support;
