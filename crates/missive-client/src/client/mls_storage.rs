//! openmls's [`StorageProvider`] on this home's encrypted store.
//!
//! Every value openmls keeps (ratchet tree, epoch secrets, message secrets,
//! HPKE private keys, KeyPackages, pending proposals) is one row of the `mls`
//! table: its key is an HMAC tag under the store's index key, its value is
//! sealed under the storage key with the tag as associated data, like every
//! other row (docs/PROTOCOL.md, "Client store"). The provider borrows a
//! [`Db`], so everything openmls writes while it processes one message is
//! part of the caller's transaction: a crash or a refusal keeps none of it.
//! Deleted rows are overwritten on disk (`secure_delete`), which is what makes
//! MLS's forward secrecy hold on this device.
//!
//! Keys are `label ‖ JSON(key) ‖ VERSION (u16, big-endian)` and values are
//! JSON, the layout of openmls's own memory provider; lists (own leaf nodes,
//! the proposal queue) are JSON arrays of JSON values.

use openmls_traits::storage::{CURRENT_VERSION, Entity, Key, StorageProvider, traits};
use serde::Serialize;

use crate::store::Db;

/// A failure of the MLS store: a store error or a value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct MlsStoreError(pub(crate) String);

impl From<serde_json::Error> for MlsStoreError {
    fn from(e: serde_json::Error) -> Self {
        MlsStoreError(format!("a stored group value does not parse: {e}"))
    }
}

impl From<crate::error::ClientError> for MlsStoreError {
    fn from(e: crate::error::ClientError) -> Self {
        MlsStoreError(e.to_string())
    }
}

type R<T> = Result<T, MlsStoreError>;

/// The provider's storage half, inside one store transaction.
pub(crate) struct MlsStore<'a, 'c> {
    db: &'a Db<'c>,
}

impl<'a, 'c> MlsStore<'a, 'c> {
    pub(crate) fn new(db: &'a Db<'c>) -> Self {
        MlsStore { db }
    }

    fn storage_key(label: &[u8], key: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(label.len() + key.len() + 2);
        out.extend_from_slice(label);
        out.extend_from_slice(key);
        out.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        out
    }

    fn write(&self, label: &[u8], key: &[u8], value: &impl Serialize) -> R<()> {
        let value = serde_json::to_vec(value)?;
        self.db.mls_put(&Self::storage_key(label, key), &value)?;
        Ok(())
    }

    fn read<V: serde::de::DeserializeOwned>(&self, label: &[u8], key: &[u8]) -> R<Option<V>> {
        match self.db.mls_get(&Self::storage_key(label, key))? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn delete(&self, label: &[u8], key: &[u8]) -> R<()> {
        self.db.mls_delete(&Self::storage_key(label, key))?;
        Ok(())
    }

    fn raw_list(&self, label: &[u8], key: &[u8]) -> R<Vec<Vec<u8>>> {
        match self.db.mls_get(&Self::storage_key(label, key))? {
            Some(bytes) => Ok(serde_json::from_slice(&bytes)?),
            None => Ok(Vec::new()),
        }
    }

    fn read_list<V: Entity<CURRENT_VERSION>>(&self, label: &[u8], key: &[u8]) -> R<Vec<V>> {
        self.raw_list(label, key)?
            .iter()
            .map(|v| serde_json::from_slice(v).map_err(MlsStoreError::from))
            .collect()
    }

    fn append(&self, label: &[u8], key: &[u8], value: &impl Serialize) -> R<()> {
        let mut list = self.raw_list(label, key)?;
        list.push(serde_json::to_vec(value)?);
        self.write(label, key, &list)
    }

    fn remove_item(&self, label: &[u8], key: &[u8], value: &impl Serialize) -> R<()> {
        let mut list = self.raw_list(label, key)?;
        let item = serde_json::to_vec(value)?;
        if let Some(pos) = list.iter().position(|v| *v == item) {
            list.remove(pos);
        }
        self.write(label, key, &list)
    }
}

fn json(key: &impl Key<CURRENT_VERSION>) -> R<Vec<u8>> {
    Ok(serde_json::to_vec(key)?)
}

fn epoch_key_pairs_id(
    group_id: &impl traits::GroupId<CURRENT_VERSION>,
    epoch: &impl traits::EpochKey<CURRENT_VERSION>,
    leaf_index: u32,
) -> R<Vec<u8>> {
    let mut key = serde_json::to_vec(group_id)?;
    key.extend_from_slice(&serde_json::to_vec(epoch)?);
    key.extend_from_slice(&serde_json::to_vec(&leaf_index)?);
    Ok(key)
}

const KEY_PACKAGE: &[u8] = b"KeyPackage";
const PSK: &[u8] = b"Psk";
const ENCRYPTION_KEY_PAIR: &[u8] = b"EncryptionKeyPair";
const SIGNATURE_KEY_PAIR: &[u8] = b"SignatureKeyPair";
const EPOCH_KEY_PAIRS: &[u8] = b"EpochKeyPairs";
const TREE: &[u8] = b"Tree";
const GROUP_CONTEXT: &[u8] = b"GroupContext";
const INTERIM_TRANSCRIPT_HASH: &[u8] = b"InterimTranscriptHash";
const CONFIRMATION_TAG: &[u8] = b"ConfirmationTag";
const JOIN_CONFIG: &[u8] = b"MlsGroupJoinConfig";
const OWN_LEAF_NODES: &[u8] = b"OwnLeafNodes";
const GROUP_STATE: &[u8] = b"GroupState";
const QUEUED_PROPOSAL: &[u8] = b"QueuedProposal";
const PROPOSAL_QUEUE_REFS: &[u8] = b"ProposalQueueRefs";
const OWN_LEAF_NODE_INDEX: &[u8] = b"OwnLeafNodeIndex";
const EPOCH_SECRETS: &[u8] = b"EpochSecrets";
const RESUMPTION_PSK_STORE: &[u8] = b"ResumptionPsk";
const MESSAGE_SECRETS: &[u8] = b"MessageSecrets";

/// A value kept per group: write, read and delete by group id.
macro_rules! per_group {
    ($write:ident, $read:ident, $delete:ident, $trait:ident, $label:expr) => {
        fn $write<G: traits::GroupId<CURRENT_VERSION>, V: traits::$trait<CURRENT_VERSION>>(
            &self,
            group_id: &G,
            value: &V,
        ) -> R<()> {
            self.write($label, &json(group_id)?, value)
        }

        fn $read<G: traits::GroupId<CURRENT_VERSION>, V: traits::$trait<CURRENT_VERSION>>(
            &self,
            group_id: &G,
        ) -> R<Option<V>> {
            self.read($label, &json(group_id)?)
        }

        fn $delete<G: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &G) -> R<()> {
            self.delete($label, &json(group_id)?)
        }
    };
}

impl StorageProvider<CURRENT_VERSION> for MlsStore<'_, '_> {
    type Error = MlsStoreError;

    per_group!(
        write_mls_join_config,
        mls_group_join_config,
        delete_group_config,
        MlsGroupJoinConfig,
        JOIN_CONFIG
    );
    per_group!(write_tree, tree, delete_tree, TreeSync, TREE);
    per_group!(
        write_interim_transcript_hash,
        interim_transcript_hash,
        delete_interim_transcript_hash,
        InterimTranscriptHash,
        INTERIM_TRANSCRIPT_HASH
    );
    per_group!(
        write_context,
        group_context,
        delete_context,
        GroupContext,
        GROUP_CONTEXT
    );
    per_group!(
        write_confirmation_tag,
        confirmation_tag,
        delete_confirmation_tag,
        ConfirmationTag,
        CONFIRMATION_TAG
    );
    per_group!(
        write_message_secrets,
        message_secrets,
        delete_message_secrets,
        MessageSecrets,
        MESSAGE_SECRETS
    );
    per_group!(
        write_resumption_psk_store,
        resumption_psk_store,
        delete_all_resumption_psk_secrets,
        ResumptionPskStore,
        RESUMPTION_PSK_STORE
    );
    per_group!(
        write_own_leaf_index,
        own_leaf_index,
        delete_own_leaf_index,
        LeafNodeIndex,
        OWN_LEAF_NODE_INDEX
    );
    per_group!(
        write_group_epoch_secrets,
        group_epoch_secrets,
        delete_group_epoch_secrets,
        GroupEpochSecrets,
        EPOCH_SECRETS
    );

    fn write_group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> R<()> {
        self.write(GROUP_STATE, &json(group_id)?, group_state)
    }

    fn group_state<
        GroupState: traits::GroupState<CURRENT_VERSION>,
        GroupId: traits::GroupId<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> R<Option<GroupState>> {
        self.read(GROUP_STATE, &json(group_id)?)
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> R<()> {
        self.delete(GROUP_STATE, &json(group_id)?)
    }

    fn append_own_leaf_node<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> R<()> {
        self.append(OWN_LEAF_NODES, &json(group_id)?, leaf_node)
    }

    fn own_leaf_nodes<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNode: traits::LeafNode<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> R<Vec<LeafNode>> {
        self.read_list(OWN_LEAF_NODES, &json(group_id)?)
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> R<()> {
        self.delete(OWN_LEAF_NODES, &json(group_id)?)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> R<()> {
        self.write(
            QUEUED_PROPOSAL,
            &serde_json::to_vec(&(group_id, proposal_ref))?,
            proposal,
        )?;
        self.append(PROPOSAL_QUEUE_REFS, &json(group_id)?, proposal_ref)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> R<Vec<ProposalRef>> {
        self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> R<Vec<(ProposalRef, QueuedProposal)>> {
        let refs: Vec<ProposalRef> = self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        let mut out = Vec::with_capacity(refs.len());
        for proposal_ref in refs {
            let key = serde_json::to_vec(&(group_id, &proposal_ref))?;
            let proposal = self.read(QUEUED_PROPOSAL, &key)?.ok_or_else(|| {
                MlsStoreError("a queued group proposal is missing from the store".into())
            })?;
            out.push((proposal_ref, proposal));
        }
        Ok(out)
    }

    fn remove_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> R<()> {
        self.remove_item(PROPOSAL_QUEUE_REFS, &json(group_id)?, proposal_ref)?;
        self.delete(
            QUEUED_PROPOSAL,
            &serde_json::to_vec(&(group_id, proposal_ref))?,
        )
    }

    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> R<()> {
        let refs: Vec<ProposalRef> = self.read_list(PROPOSAL_QUEUE_REFS, &json(group_id)?)?;
        for proposal_ref in refs {
            self.delete(
                QUEUED_PROPOSAL,
                &serde_json::to_vec(&(group_id, proposal_ref))?,
            )?;
        }
        self.delete(PROPOSAL_QUEUE_REFS, &json(group_id)?)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> R<()> {
        self.write(SIGNATURE_KEY_PAIR, &json(public_key)?, signature_key_pair)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> R<Option<SignatureKeyPair>> {
        self.read(SIGNATURE_KEY_PAIR, &json(public_key)?)
    }

    fn delete_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> R<()> {
        self.delete(SIGNATURE_KEY_PAIR, &json(public_key)?)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> R<()> {
        self.write(ENCRYPTION_KEY_PAIR, &json(public_key)?, key_pair)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> R<Option<HpkeKeyPair>> {
        self.read(ENCRYPTION_KEY_PAIR, &json(public_key)?)
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> R<()> {
        self.delete(ENCRYPTION_KEY_PAIR, &json(public_key)?)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> R<()> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        self.write(EPOCH_KEY_PAIRS, &key, &key_pairs)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> R<Vec<HpkeKeyPair>> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        Ok(self.read(EPOCH_KEY_PAIRS, &key)?.unwrap_or_default())
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> R<()> {
        let key = epoch_key_pairs_id(group_id, epoch, leaf_index)?;
        self.delete(EPOCH_KEY_PAIRS, &key)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> R<()> {
        self.write(KEY_PACKAGE, &json(hash_ref)?, key_package)
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> R<Option<KeyPackage>> {
        self.read(KEY_PACKAGE, &json(hash_ref)?)
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> R<()> {
        self.delete(KEY_PACKAGE, &json(hash_ref)?)
    }

    fn write_psk<
        PskId: traits::PskId<CURRENT_VERSION>,
        PskBundle: traits::PskBundle<CURRENT_VERSION>,
    >(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> R<()> {
        self.write(PSK, &json(psk_id)?, psk)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> R<Option<PskBundle>> {
        self.read(PSK, &json(psk_id)?)
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &PskKey) -> R<()> {
        self.delete(PSK, &json(psk_id)?)
    }
}
