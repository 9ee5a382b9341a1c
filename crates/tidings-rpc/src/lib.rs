#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`client`]: [`HttpRpc`], the HTTP client to the backend, and its
//!   [`RpcConfig`].
//! - [`settings`]: [`RpcSettings`], the `[rpc]` configuration section.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
pub mod settings;

pub use client::{HttpRpc, RpcConfig};
pub use settings::RpcSettings;
