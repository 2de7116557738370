//! The Missive wire contract, generated at build time from
//! `proto/missive/v1/*.proto` (the single source of truth for the wire).
//!
//! Every message and field is documented in the `.proto` files; the byte
//! layouts inside `bytes` fields are specified in `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]

pub mod codec;

/// Version 1 of the protocol, package `missive.v1`.
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("missive.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` file, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/missive_descriptor.bin"));

/// Fully qualified service names, as a reflection client lists them.
pub const SERVICE_NAMES: &[&str] = &[
    "missive.v1.AccountService",
    "missive.v1.KeyService",
    "missive.v1.MessageService",
    "missive.v1.ReportService",
    "missive.v1.AttachmentService",
    "missive.v1.LinkService",
    "missive.v1.GroupService",
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn descriptor_set_holds_every_service() {
        let set = prost_types_lite::decode(FILE_DESCRIPTOR_SET);
        for name in SERVICE_NAMES {
            let short = name.trim_start_matches("missive.v1.");
            assert!(
                set.contains(&short.to_owned()),
                "{name} missing from descriptor set"
            );
        }
    }

    #[test]
    fn envelope_round_trips() {
        let envelope = v1::Envelope {
            id: 7,
            sender: "alice".into(),
            content: vec![1, 2, 3],
            ..Default::default()
        };
        let decoded = v1::Envelope::decode(envelope.encode_to_vec().as_slice());
        assert_eq!(decoded.ok(), Some(envelope));
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to list service
    /// names, without pulling in prost-types.
    mod prost_types_lite {
        #[derive(Clone, PartialEq, prost::Message)]
        struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            file: Vec<FileDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct FileDescriptorProto {
            #[prost(message, repeated, tag = "6")]
            service: Vec<ServiceDescriptorProto>,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct ServiceDescriptorProto {
            #[prost(string, optional, tag = "1")]
            name: Option<String>,
        }

        pub(crate) fn decode(bytes: &[u8]) -> Vec<String> {
            let set = <FileDescriptorSet as prost::Message>::decode(bytes).unwrap_or_default();
            set.file
                .into_iter()
                .flat_map(|f| f.service)
                .filter_map(|s| s.name)
                .collect()
        }
    }
}
