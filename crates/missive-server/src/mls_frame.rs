//! The public header of a group's application messages. The server never
//! decrypts MLS, but a `PrivateMessage` (RFC 9420, §6.3) carries its group
//! id, epoch, content type and authenticated data in the clear. Missive's
//! authenticated data is the message's franking commitment
//! (docs/PROTOCOL.md, "Franking in groups"), so the server checks the
//! header when it accepts a message and reads the commitment from the
//! stored ciphertext when it delivers it, instead of storing it twice.

use openmls::prelude::{ContentType, MlsMessageBodyIn, MlsMessageIn};
use tls_codec::Deserialize;

/// What the server reads of an application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplicationHeader {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// The epoch it was encrypted in.
    pub epoch: u64,
    /// The authenticated data: Missive's franking commitment.
    pub authenticated_data: Vec<u8>,
}

/// Why a message is not an application `PrivateMessage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not one whole `MLSMessage`.
    #[error("it is not an MLS message")]
    Malformed,
    /// Another wire format than `mls_private_message`.
    #[error("it is not an MLS PrivateMessage")]
    NotPrivate,
    /// A `PrivateMessage` of a commit or proposal.
    #[error("its MLS content type is not application")]
    NotApplication,
}

/// Reads the header of an application `PrivateMessage`.
pub fn application_header(content: &[u8]) -> Result<ApplicationHeader, FrameError> {
    let message =
        MlsMessageIn::tls_deserialize_exact(content).map_err(|_| FrameError::Malformed)?;
    let MlsMessageBodyIn::PrivateMessage(private) = message.extract() else {
        return Err(FrameError::NotPrivate);
    };
    if private.content_type() != ContentType::Application {
        return Err(FrameError::NotApplication);
    }
    Ok(ApplicationHeader {
        group_id: private.group_id().as_slice().to_vec(),
        epoch: private.epoch().as_u64(),
        authenticated_data: private.aad().to_vec(),
    })
}

/// An `MLSMessage` holding a `PrivateMessage` with these header fields and
/// `ciphertext` (not a real encryption), encoded by hand from RFC 9420
/// §6.3 with the variable-length vectors of §2.1.2: for the server's tests,
/// which talk to the server without an MLS client.
#[doc(hidden)]
pub fn private_message_for_tests(
    group_id: &[u8],
    epoch: u64,
    content_type: u8,
    aad: &[u8],
    ciphertext: &[u8],
) -> Vec<u8> {
    fn vector(out: &mut Vec<u8>, bytes: &[u8]) {
        // Test inputs are far below the 30-bit limit of the 4-byte form.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX) & 0x3fff_ffff;
        if len < 0x40 {
            out.extend_from_slice(&len.to_be_bytes()[3..]);
        } else if len < 0x4000 {
            out.extend_from_slice(&(0x4000 | len).to_be_bytes()[2..]);
        } else {
            out.extend_from_slice(&(0x8000_0000 | len).to_be_bytes());
        }
        out.extend_from_slice(bytes);
    }
    let mut out = vec![0, 1, 0, 2]; // mls10, mls_private_message
    vector(&mut out, group_id);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.push(content_type);
    vector(&mut out, aad);
    vector(&mut out, &[0x5e; 40]); // encrypted_sender_data
    vector(&mut out, ciphertext);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn private_message(content_type: u8, aad: &[u8]) -> Vec<u8> {
        private_message_for_tests(&[0x47; 16], 7, content_type, aad, &[0xc7; 600])
    }

    #[test]
    fn reads_group_epoch_and_authenticated_data() {
        let header = application_header(&private_message(1, &[0xaa; 32])).unwrap();
        assert_eq!(
            header,
            ApplicationHeader {
                group_id: vec![0x47; 16],
                epoch: 7,
                authenticated_data: vec![0xaa; 32],
            }
        );
        assert_eq!(
            application_header(&private_message(3, &[0xaa; 32])),
            Err(FrameError::NotApplication)
        );
        let mut trailing = private_message(1, &[0xaa; 32]);
        trailing.push(0);
        assert_eq!(application_header(&trailing), Err(FrameError::Malformed));
    }

    #[test]
    fn refuses_what_is_not_an_application_private_message() {
        assert_eq!(application_header(b""), Err(FrameError::Malformed));
        assert_eq!(application_header(&[0xff; 40]), Err(FrameError::Malformed));
        // version mls10, wire format mls_welcome (3), then nothing valid.
        assert_eq!(
            application_header(&[0, 1, 0, 3, 0]),
            Err(FrameError::Malformed)
        );
    }
}
