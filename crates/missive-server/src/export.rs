//! `export-account` and `reports list|show`: read-only views of the store,
//! safe to run while the server runs (WAL lets a second process read).

use serde::Serialize;

use crate::storage::{AccountExport, LinkSlot, ReportRecord};
use crate::time::{iso_date, iso_timestamp};

/// The `export-account` document (every field is explained in
/// `docs/LAWFUL_ACCESS.md`).
#[derive(Debug, Serialize)]
pub struct ExportDocument {
    /// Format version of this document.
    pub format: &'static str,
    /// The account's username.
    pub username: String,
    /// Day the account was created (UTC, `YYYY-MM-DD`).
    pub created: String,
    /// Last day the account logged in or opened its message stream.
    pub last_seen_day: String,
    /// SHA-256 fingerprint of the account's public identity keys.
    pub identity_fingerprint: String,
    /// Devices.
    pub devices: Vec<ExportDevice>,
    /// Envelopes waiting for delivery, all devices (a count: no content, no senders).
    pub pending_envelopes: u64,
    /// Reports other users filed about messages from this account, as the reporters disclosed them
    /// (without naming the reporter).
    pub reports_about_account: Vec<ExportReport>,
    /// Number of reports this account filed (a count: no content, no names).
    pub reports_filed: u64,
    /// The attachment quota ledger: sealed bytes the account reserved for
    /// uploads, per day (no blob ids: nothing links a blob to its sender or
    /// its recipients).
    pub attachment_bytes_reserved: Vec<ExportLedgerDay>,
    /// Version of the signed device list the account published last (`null`
    /// when it never published one).
    pub device_list_version: Option<u64>,
    /// The device ids that list names (no keys, no list bytes).
    pub device_list_devices: Vec<u32>,
    /// Device links this account started (posted HELLO into) whose mailbox
    /// the server still holds: at most 10 minutes each (no rendezvous id, no
    /// payloads).
    pub pending_links: Vec<ExportLink>,
    /// Groups a device of this account receives (docs/LAWFUL_ACCESS.md,
    /// "Groups"): the group id and delivery counts only; no member is named,
    /// no content, no group name.
    pub groups: Vec<ExportGroup>,
}

/// One group a device of the account receives.
#[derive(Debug, Serialize)]
pub struct ExportGroup {
    /// The MLS group id the clients chose (16 random bytes), hex.
    pub group_id: String,
    /// Day the group was registered (UTC, `YYYY-MM-DD`).
    pub created: String,
    /// The account's devices receiving it, with the day each joined.
    pub devices: Vec<ExportGroupDevice>,
    /// How many devices receive the group in all (a count; no names).
    pub receiving_devices: u64,
    /// Group messages and Welcomes still stored for the group (not yet
    /// acknowledged by every device they are for).
    pub pending_messages: u64,
    /// Their total size in bytes (ciphertext).
    pub pending_bytes: u64,
}

/// One of the account's devices in a group.
#[derive(Debug, Serialize)]
pub struct ExportGroupDevice {
    /// Device id.
    pub device_id: u32,
    /// Day it joined (the group's creation or the commit adding it).
    pub joined: String,
}

/// A link mailbox whose HELLO the account posted.
#[derive(Debug, Serialize)]
pub struct ExportLink {
    /// When the mailbox is deleted (UTC, milliseconds); 10 minutes after
    /// the new device opened it.
    pub expires_at: String,
    /// The last message posted: `hello`, `reply` or `finish`.
    pub step: &'static str,
}

/// One day of the attachment quota ledger.
#[derive(Debug, Serialize)]
pub struct ExportLedgerDay {
    /// The day (UTC, `YYYY-MM-DD`).
    pub day: String,
    /// Sealed bytes reserved that day.
    pub bytes: u64,
}

/// The ledger as exported.
pub fn ledger_days(rows: &[(i64, u64)]) -> Vec<ExportLedgerDay> {
    rows.iter()
        .map(|&(day, bytes)| ExportLedgerDay {
            day: iso_date(day),
            bytes,
        })
        .collect()
}

/// One device.
#[derive(Debug, Serialize)]
pub struct ExportDevice {
    /// Device id.
    pub device_id: u32,
    /// Day the device registered.
    pub registered: String,
    /// Day the device last logged in or opened its stream (`None`: not seen
    /// since the server began recording it).
    pub last_seen_day: Option<String>,
    /// SHA-256 fingerprint of the device's own public key (protocol v2;
    /// the account key's for devices registered before device keys).
    pub identity_fingerprint: String,
    /// Envelopes waiting for this device (a count).
    pub pending_envelopes: u64,
    /// One-time X25519 prekeys left.
    pub one_time_prekeys: u32,
    /// One-time ML-KEM prekeys left.
    pub one_time_kem_prekeys: u32,
    /// One-time MLS KeyPackages left.
    pub one_time_key_packages: u32,
    /// Whether a last-resort KeyPackage is stored.
    pub last_resort_key_package: bool,
}

/// A report about the account, as the reporter disclosed it.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    /// Report id.
    pub report_id: u64,
    /// Fingerprint of the identity the account had when the reported
    /// message was sent (the same as the account's: identities never change).
    pub sender_identity_fingerprint: String,
    /// When the report was filed.
    pub reported_at: String,
    /// When the server accepted the reported message.
    pub message_sent_at: String,
    /// The text the reporter disclosed (verified against the franking commitment).
    pub text: String,
    /// The reporter's reason.
    pub reason: String,
}

/// Builds the export document.
pub fn document(export: AccountExport) -> ExportDocument {
    let fingerprint = crate::checks::fingerprint(&export.identity);
    ExportDocument {
        format: "missive-account-export-v1",
        username: export.username,
        created: iso_date(export.created_day),
        last_seen_day: iso_date(export.last_seen_day),
        identity_fingerprint: fingerprint.clone(),
        pending_envelopes: export.devices.iter().map(|d| d.pending_envelopes).sum(),
        devices: export
            .devices
            .into_iter()
            .map(|d| ExportDevice {
                device_id: d.device_id,
                registered: iso_date(d.created_day),
                last_seen_day: (d.last_seen_day > 0).then(|| iso_date(d.last_seen_day)),
                identity_fingerprint: crate::checks::fingerprint(&d.identity),
                pending_envelopes: d.pending_envelopes,
                one_time_prekeys: d.prekeys.one_time,
                one_time_kem_prekeys: d.prekeys.one_time_kem,
                one_time_key_packages: d.key_packages.one_time,
                last_resort_key_package: d.key_packages.has_last_resort,
            })
            .collect(),
        reports_about_account: export
            .reports_against
            .into_iter()
            .map(|r| ExportReport {
                report_id: r.id,
                sender_identity_fingerprint: r
                    .sender_identity_fingerprint
                    .unwrap_or_else(|| fingerprint.clone()),
                reported_at: iso_timestamp(r.created_at_ms),
                message_sent_at: iso_timestamp(r.message_server_timestamp_ms),
                text: r.text,
                reason: r.reason,
            })
            .collect(),
        reports_filed: export.reports_filed,
        // Filled from the blob store by `export-account` (another store).
        attachment_bytes_reserved: Vec::new(),
        device_list_version: export.device_list_version,
        device_list_devices: export.device_list_devices,
        pending_links: export
            .pending_links
            .into_iter()
            .map(|link| ExportLink {
                expires_at: iso_timestamp(link.expires_at_ms),
                step: match link.step {
                    LinkSlot::Hello => "hello",
                    LinkSlot::Reply => "reply",
                    LinkSlot::Finish => "finish",
                },
            })
            .collect(),
        groups: export
            .groups
            .into_iter()
            .map(|g| ExportGroup {
                group_id: hex::encode(&g.group_id),
                created: iso_date(g.created_day),
                devices: g
                    .devices
                    .into_iter()
                    .map(|(device_id, day)| ExportGroupDevice {
                        device_id,
                        joined: iso_date(day),
                    })
                    .collect(),
                receiving_devices: g.receiving_devices,
                pending_messages: g.pending_messages,
                pending_bytes: g.pending_bytes,
            })
            .collect(),
    }
}

/// A report for a moderator, human-readable.
pub fn report_text(report: &ReportRecord) -> String {
    let file = match &report.file {
        Some(f) => format!(
            "  file:      {name:?} ({size} bytes, {mime:?}), blob {blob}; ciphertext hash {hash}\n             (`missive-server reports save-file {id} --out PATH` fetches, opens and checks it)\n",
            name = f.file_name,
            size = f.size,
            mime = f.mime_type,
            blob = f.blob_id,
            hash = f.ciphertext_hash,
            id = report.id,
        ),
        None => String::new(),
    };
    format!(
        "report {id}\n  reporter:  {reporter}\n  sender:    {sender}\n  sender key: {fingerprint}\n  sent at:   {sent}\n  reported:  {reported}\n  verified:  {verified}\n  message:   {message}\n  reason:    {reason}\n{file}  text:\n{text}\n",
        id = report.id,
        reporter = account_name(&report.reporter, report.reporter_account),
        sender = account_name(&report.sender, report.sender_account),
        fingerprint = report
            .sender_identity_fingerprint
            .as_deref()
            .unwrap_or("unknown (the account is unknown or was deleted before the report)"),
        sent = iso_timestamp(report.message_server_timestamp_ms),
        reported = iso_timestamp(report.created_at_ms),
        verified = match (report.verified, report.franking_key_id) {
            (false, _) => "no".to_owned(),
            (true, Some(key)) => format!("yes (commitment and server tag, franking key {key})"),
            (true, None) => "yes (commitment and server tag, before franking key ids)".to_owned(),
        },
        message = report.message_id,
        reason = report.reason,
        text = report
            .text
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// `name (account N)`, or `name (account unknown)`.
fn account_name(name: &str, account: Option<i64>) -> String {
    match account {
        Some(id) => format!("{name} (account {id})"),
        None => format!("{name} (account unknown)"),
    }
}

/// One line per report.
pub fn report_line(report: &ReportRecord) -> String {
    let mut preview: String = report.text.chars().take(40).collect();
    if preview.len() < report.text.len() {
        preview.push('…');
    }
    format!(
        "{}\t{}\t{} -> reported by {}\t{:?}",
        report.id,
        iso_timestamp(report.created_at_ms),
        report.sender,
        report.reporter,
        preview.replace('\n', " ")
    )
}
