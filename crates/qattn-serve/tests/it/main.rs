//! Integration tests of qattn-serve through generated gRPC clients on 127.0.0.1:0, with the
//! random tiny BERT from ../shared (offline cache).

mod admin_routing;
mod auth_limits;
mod batching;
mod common;
mod fallback;
mod fuzz;
mod python_clients;
mod rpcs;
mod web;
