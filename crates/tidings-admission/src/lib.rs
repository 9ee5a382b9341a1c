#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`admission`]: [`Admission`], [`Ticket`], [`Admitted`], [`Refusal`].
//! - [`origin`]: the Origin policy (same origin by default, a list, or any).
//! - [`limits`]: connection limits (total, per address, per user) and the
//!   client address behind trusted proxies.
//! - [`endpoint`]: [`Endpoint`] and [`Body`], the HTTP seam for adapters.

pub mod admission;
pub mod endpoint;
pub mod limits;
pub mod origin;

pub use admission::{drain_offset, Admission, AdmissionConfig, Admitted, Refusal, Ticket};
pub use endpoint::{full_body, text, Body, Endpoint};
pub use limits::{IpNet, LimitHit, Limits, Slot};
