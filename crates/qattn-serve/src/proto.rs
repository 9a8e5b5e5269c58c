//! Generated protobuf messages, clients and servers (tonic + prost), and the encoded file
//! descriptor set served by reflection.

/// `qattn.v1`: the typed inference and admin API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod qattn {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/qattn.v1.rs"));
    }
}

/// `inference`: the KServe Open Inference Protocol v2 (Triton-compatible field numbers).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// The encoded `FileDescriptorSet` of every service above (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/qattn_descriptor.bin"));
