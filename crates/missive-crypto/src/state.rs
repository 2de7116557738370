//! Versioned serialisation of session state (docs/PROTOCOL.md, "Session state").
//!
//! Hand-derived prost messages: unknown fields are skipped on decode, so a
//! state written by a later minor revision that only adds fields still loads.

use zeroize::Zeroize;

/// Current session state format version: 3 (protocol v2) adds both ends'
/// addresses. Formats 1 and 2 were protocol v1 sessions and are refused.
pub(crate) const SESSION_STATE_VERSION: u32 = 3;

/// Serialised session, format version 3.
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
    #[prost(message, optional, tag = "15")]
    pub(crate) local_address: Option<AddressPickle>,
    #[prost(message, optional, tag = "16")]
    pub(crate) remote_address: Option<AddressPickle>,
}

/// One end's address.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AddressPickle {
    #[prost(string, tag = "1")]
    pub(crate) username: String,
    #[prost(uint32, tag = "2")]
    pub(crate) device_id: u32,
}

impl AddressPickle {
    pub(crate) fn of(address: &crate::Address) -> Self {
        Self {
            username: address.username.clone(),
            device_id: address.device_id,
        }
    }

    pub(crate) fn address(&self) -> crate::Address {
        crate::Address::new(self.username.clone(), self.device_id)
    }
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
