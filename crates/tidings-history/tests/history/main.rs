//! Tests of tidings-history against a real `redis-server` and the in-memory
//! twin (one binary, so one link).

mod differential;
mod property;
mod redis;
mod suite;
mod support;
