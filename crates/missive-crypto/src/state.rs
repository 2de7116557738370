//! Versioned serialisation of session state (docs/PROTOCOL.md, "Session state").
//!
//! Hand-derived prost messages: unknown fields are skipped on decode, so a
//! state written by a later minor revision that only adds fields still loads.

use zeroize::Zeroize;

/// Current session state format version: 2 adds `SkippedKeyPickle::stored_at_ms`
/// and drops the skipped keys of evicted chains.
pub(crate) const SESSION_STATE_VERSION: u32 = 2;

/// The first format: skipped keys carry no time and may belong to chains whose
/// ratchet key was evicted. Still loaded (docs/PROTOCOL.md, "Session state").
pub(crate) const SESSION_STATE_VERSION_1: u32 = 1;

/// Serialised session, format versions 1 and 2.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionPickle {
    #[prost(uint32, tag = "1")]
    pub(crate) version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) local_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) remote_identity: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) root_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub(crate) our_ratchet_secret: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub(crate) sending_chain_key: Option<Vec<u8>>,
    #[prost(uint32, tag = "7")]
    pub(crate) sending_counter: u32,
    #[prost(uint32, tag = "8")]
    pub(crate) previous_counter: u32,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub(crate) remote_ratchet_key: Option<Vec<u8>>,
    #[prost(message, optional, tag = "10")]
    pub(crate) receiving: Option<ReceivingChainPickle>,
    #[prost(bytes = "vec", repeated, tag = "11")]
    pub(crate) previous_ratchet_keys: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "12")]
    pub(crate) skipped: Vec<SkippedKeyPickle>,
    #[prost(bytes = "vec", optional, tag = "13")]
    pub(crate) pending_prekey: Option<Vec<u8>>,
    #[prost(bytes = "vec", tag = "14")]
    pub(crate) base_key: Vec<u8>,
}

/// The current receiving chain.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReceivingChainPickle {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) ratchet_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) chain_key: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub(crate) next_counter: u32,
}

/// A stored key of a skipped message.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SkippedKeyPickle {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) ratchet_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub(crate) counter: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) message_key: Vec<u8>,
    /// Caller time when stored, ms since the Unix epoch (format 2); absent until
    /// the session is given the time.
    #[prost(uint64, optional, tag = "4")]
    pub(crate) stored_at_ms: Option<u64>,
}

impl SessionPickle {
    /// Overwrites every secret field.
    pub(crate) fn wipe(&mut self) {
        self.root_key.zeroize();
        self.our_ratchet_secret.zeroize();
        if let Some(k) = self.sending_chain_key.as_mut() {
            k.zeroize();
        }
        if let Some(r) = self.receiving.as_mut() {
            r.chain_key.zeroize();
        }
        for s in &mut self.skipped {
            s.message_key.zeroize();
        }
    }
}
