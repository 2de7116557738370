//! Group storage (the KeyPackage directory and the MLS Delivery Service),
//! written once for both SQL backends: every statement uses `$N`
//! parameters, which SQLite and PostgreSQL both accept, and only types both
//! decode alike (64-bit integers, blobs, text). A backend module defines
//! `Db` and `DbRow`, its `get`/`map_err`/`int`/`u32_of`/`u64_of` helpers, the
//! row-locking suffixes `FOR_UPDATE` and `SKIP_LOCKED` (empty on SQLite,
//! whose write transactions are `BEGIN IMMEDIATE` and so already exclusive)
//! and `group_tx()`, a write transaction; then it expands [`group_helpers!`]
//! and `group_methods!(Backend)` (the [`super::GroupStorage`] impl) at module
//! level.
//!
//! Layout (migrations `sqlite/0009_groups.sql`, `postgres/0008_groups.sql`,
//! then `*/…compact_group_messages.sql`): a group row holds the epoch, the
//! next seq and the group's small `number`; commits lock it (PostgreSQL
//! `FOR UPDATE`), so the epoch compare-and-set and the seq order are one
//! decision per group. Each group message is one row whatever the number of
//! receivers, keyed by (group number, seq), holding its ciphertext and a few
//! integers: the franking commitment is read from the ciphertext and the tag
//! made at delivery (`service::messages`), the sender's name comes from
//! `accounts`. A device's member row says which seqs it gets.

/// Free helpers over a backend's transaction type.
macro_rules! group_helpers {
    () => {
        type GroupTx = sqlx::Transaction<'static, Db>;

        /// Deletes the group messages no device still gets (acknowledged by
        /// every receiving device, or nobody receives them) and Welcomes
        /// with no recipient left; `group` narrows it to one group.
        const GROUP_GC_MESSAGES: &str = "DELETE FROM group_messages WHERE ($1 = 0 OR \
             group_number = (SELECT number FROM mls_groups WHERE id = $2)) \
             AND NOT EXISTS (SELECT 1 FROM group_members gm JOIN mls_groups g ON g.id = gm.group_id \
             WHERE g.number = group_messages.group_number AND gm.cursor_seq < group_messages.seq \
             AND gm.joined_seq <= group_messages.seq \
             AND (gm.removed_at_seq IS NULL OR group_messages.seq <= gm.removed_at_seq) \
             AND NOT (gm.account_id = group_messages.sender_account \
             AND gm.device_id = group_messages.sender_device))";
        const GROUP_GC_WELCOMES: &str = "DELETE FROM group_welcomes WHERE ($1 = 0 OR group_id = $2) \
             AND NOT EXISTS (SELECT 1 FROM group_welcome_recipients r \
             WHERE r.group_id = group_welcomes.group_id AND r.seq = group_welcomes.seq)";
        /// Run before an account's row goes: its group messages still
        /// waiting keep its username, which `accounts` no longer has.
        const KEEP_SENDER_NAMES: &str = "UPDATE group_messages SET sender = \
             (SELECT username FROM accounts WHERE id = $1) WHERE sender_account = $1 AND sender IS NULL";

        /// Ends a write that stores nothing, with an explicit `ROLLBACK`:
        /// dropping a sqlx transaction only queues it on the connection, which
        /// until the pool hands it out again stays "idle in transaction" on
        /// PostgreSQL, holding the group row's `FOR UPDATE` lock.
        async fn store_nothing<T>(tx: GroupTx, outcome: T) -> Result<T> {
            tx.rollback().await.map_err(map_err)?;
            Ok(outcome)
        }

        fn group_message_of(row: &DbRow, kind: Option<i32>) -> Result<super::StoredGroupMessage> {
            Ok(super::StoredGroupMessage {
                group_id: get(row, "group_id")?,
                seq: u64_of(get(row, "seq")?)?,
                kind: match kind {
                    Some(kind) => kind,
                    None => i32::try_from(get::<i64>(row, "kind")?).unwrap_or_default(),
                },
                epoch: u64_of(get(row, "epoch")?)?,
                sender: get(row, "sender")?,
                sender_account: get(row, "sender_account")?,
                sender_device: u32_of(get(row, "sender_device")?)?,
                content: get(row, "content")?,
                message_id: get(row, "message_id")?,
                server_timestamp_ms: u64_of(get(row, "server_timestamp_ms")?)?,
            })
        }

        async fn key_package_counts(
            tx: &mut GroupTx,
            device: DeviceAddress,
        ) -> Result<super::KeyPackageCounts> {
            let one_time: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM key_packages WHERE account_id = $1 AND device_id = $2",
            )
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?;
            let last_resort: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM last_resort_key_packages WHERE account_id = $1 AND device_id = $2",
            )
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_one(&mut **tx)
            .await
            .map_err(map_err)?;
            Ok(super::KeyPackageCounts {
                one_time: u32_of(one_time)?,
                has_last_resort: last_resort > 0,
            })
        }

        /// A group's row as a write sees it.
        struct LockedGroup {
            number: i64,
            epoch: u64,
            next_seq: u64,
        }

        /// The group's number, epoch and next seq, locking its row.
        async fn lock_group(tx: &mut GroupTx, group_id: &[u8]) -> Result<Option<LockedGroup>> {
            let row = sqlx::query(&format!(
                "SELECT number, epoch, next_seq FROM mls_groups WHERE id = $1{FOR_UPDATE}"
            ))
            .bind(group_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
            row.map(|r| {
                Ok(LockedGroup {
                    number: get(&r, "number")?,
                    epoch: u64_of(get(&r, "epoch")?)?,
                    next_seq: u64_of(get(&r, "next_seq")?)?,
                })
            })
            .transpose()
        }

        /// A message this device stored before with this id: its answer.
        async fn group_duplicate(
            tx: &mut GroupTx,
            group: &LockedGroup,
            message: &super::NewGroupMessage,
        ) -> Result<Option<super::GroupWrite>> {
            // The index holds the id's first 8 bytes; the row, all 16.
            let row = sqlx::query(
                "SELECT seq, kind, epoch, server_timestamp_ms FROM group_messages \
                 WHERE group_number = $1 AND substr(message_id, 1, 8) = substr($4, 1, 8) \
                 AND sender_account = $2 AND sender_device = $3 AND message_id = $4",
            )
            .bind(group.number)
            .bind(message.sender.account)
            .bind(i64::from(message.sender.device))
            .bind(&message.message_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
            let Some(row) = row else { return Ok(None) };
            let epoch = u64_of(get(&row, "epoch")?)?;
            let commit = get::<i64>(&row, "kind")? == i64::from(super::COMMIT_KIND);
            Ok(Some(super::GroupWrite::Duplicate {
                seq: u64_of(get(&row, "seq")?)?,
                server_timestamp_ms: u64_of(get(&row, "server_timestamp_ms")?)?,
                epoch: if commit { epoch.saturating_add(1) } else { epoch },
            }))
        }

        /// `None`: the device has no member row; `Some(removed_at_seq)`.
        async fn group_member(
            tx: &mut GroupTx,
            group_id: &[u8],
            device: DeviceAddress,
        ) -> Result<Option<Option<u64>>> {
            let row = sqlx::query(
                "SELECT removed_at_seq FROM group_members \
                 WHERE group_id = $1 AND account_id = $2 AND device_id = $3",
            )
            .bind(group_id)
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
            row.map(|r| get::<Option<i64>>(&r, "removed_at_seq")?.map(u64_of).transpose())
                .transpose()
        }

        /// Inserts the message at `seq` and moves the group to `seq + 1`
        /// and `epoch`.
        async fn insert_group_message(
            tx: &mut GroupTx,
            group: &LockedGroup,
            message: &super::NewGroupMessage,
            epoch: u64,
        ) -> Result<()> {
            let seq = group.next_seq;
            sqlx::query(
                "INSERT INTO group_messages (group_number, seq, kind, epoch, sender_account, \
                 sender_device, message_id, content, server_timestamp_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(group.number)
            .bind(int(seq))
            .bind(i64::from(message.kind))
            .bind(int(message.epoch))
            .bind(message.sender.account)
            .bind(i64::from(message.sender.device))
            .bind(&message.message_id)
            .bind(&message.content)
            .bind(int(message.server_timestamp_ms))
            .bind(message.disappears_at_ms.map(int))
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            sqlx::query("UPDATE mls_groups SET next_seq = $1, epoch = $2 WHERE number = $3")
                .bind(int(seq.saturating_add(1)))
                .bind(int(epoch))
                .bind(group.number)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
            Ok(())
        }

        /// Every device that gets the message at `seq`, but its sender.
        async fn group_wake_list(
            tx: &mut GroupTx,
            group_id: &[u8],
            seq: u64,
            sender: DeviceAddress,
        ) -> Result<Vec<DeviceAddress>> {
            let rows = sqlx::query(
                "SELECT account_id, device_id FROM group_members WHERE group_id = $1 \
                 AND (removed_at_seq IS NULL OR removed_at_seq >= $2) \
                 AND NOT (account_id = $3 AND device_id = $4) ORDER BY account_id, device_id",
            )
            .bind(group_id)
            .bind(int(seq))
            .bind(sender.account)
            .bind(i64::from(sender.device))
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
            rows.iter()
                .map(|r| {
                    Ok(DeviceAddress {
                        account: get(r, "account_id")?,
                        device: u32_of(get(r, "device_id")?)?,
                    })
                })
                .collect()
        }

        /// Deletes what no device still gets: in one group, or everywhere.
        async fn group_gc<'e, E>(executor: E, group_id: Option<&[u8]>) -> Result<u64>
        where
            E: sqlx::Executor<'e, Database = Db> + Copy,
        {
            let (all, id) = match group_id {
                Some(id) => (1_i64, id.to_vec()),
                None => (0, Vec::new()),
            };
            let mut removed = 0;
            for statement in [GROUP_GC_MESSAGES, GROUP_GC_WELCOMES] {
                removed += sqlx::query(statement)
                    .bind(all)
                    .bind(&id)
                    .execute(executor)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
            }
            Ok(removed)
        }

        /// The purge's share for groups: expired messages and Welcomes,
        /// removed devices whose removal commit is gone, what no device
        /// still gets, and groups no device receives.
        async fn purge_groups(tx: &mut GroupTx, now_ms: u64, cutoff_ms: u64) -> Result<u64> {
            let mut removed = sqlx::query(
                "DELETE FROM group_welcomes WHERE server_timestamp_ms < $1 OR expires_at_ms <= $2",
            )
            .bind(int(cutoff_ms))
            .bind(int(now_ms))
            .execute(&mut **tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            // Messages a sender made disappear sooner (a partial index).
            removed += sqlx::query("DELETE FROM group_messages WHERE expires_at_ms <= $1")
                .bind(int(now_ms))
                .execute(&mut **tx)
                .await
                .map_err(map_err)?
                .rows_affected();
            // Retention. A group's seqs are given in acceptance order, so its
            // messages past retention are the lowest seqs: each group costs
            // one look at its oldest message, and a group with expired ones
            // a walk over those only (no index on the time).
            let expiring: Vec<i64> = sqlx::query_scalar(
                "SELECT g.number FROM mls_groups g WHERE (SELECT m.server_timestamp_ms \
                 FROM group_messages m WHERE m.group_number = g.number ORDER BY m.seq LIMIT 1) < $1",
            )
            .bind(int(cutoff_ms))
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
            for number in expiring {
                removed += sqlx::query(
                    "DELETE FROM group_messages WHERE group_number = $1 AND seq < COALESCE(\
                     (SELECT m.seq FROM group_messages m WHERE m.group_number = $1 \
                     AND m.server_timestamp_ms >= $2 ORDER BY m.seq LIMIT 1), $3)",
                )
                .bind(number)
                .bind(int(cutoff_ms))
                .bind(i64::MAX)
                .execute(&mut **tx)
                .await
                .map_err(map_err)?
                .rows_affected();
            }
            sqlx::query(
                "DELETE FROM group_members WHERE removed_at_seq IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM group_messages m JOIN mls_groups g ON g.number = m.group_number \
                 WHERE g.id = group_members.group_id \
                 AND m.seq > group_members.cursor_seq AND m.seq <= group_members.removed_at_seq)",
            )
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            for statement in [GROUP_GC_MESSAGES, GROUP_GC_WELCOMES] {
                removed += sqlx::query(statement)
                    .bind(0_i64)
                    .bind(Vec::<u8>::new())
                    .execute(&mut **tx)
                    .await
                    .map_err(map_err)?
                    .rows_affected();
            }
            sqlx::query(
                "DELETE FROM mls_groups WHERE NOT EXISTS \
                 (SELECT 1 FROM group_members gm WHERE gm.group_id = mls_groups.id)",
            )
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
            Ok(removed)
        }

        /// The groups an account's devices receive, for its export.
        async fn group_exports(
            tx: &mut GroupTx,
            account: AccountId,
        ) -> Result<Vec<super::GroupExport>> {
            let ids: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT DISTINCT group_id FROM group_members WHERE account_id = $1 ORDER BY group_id",
            )
            .bind(account)
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
            let mut groups = Vec::with_capacity(ids.len());
            for id in ids {
                let created_at_ms: i64 =
                    sqlx::query_scalar("SELECT created_at_ms FROM mls_groups WHERE id = $1")
                        .bind(&id)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(map_err)?;
                let devices = sqlx::query(
                    "SELECT device_id, joined_day FROM group_members \
                     WHERE group_id = $1 AND account_id = $2 ORDER BY device_id",
                )
                .bind(&id)
                .bind(account)
                .fetch_all(&mut **tx)
                .await
                .map_err(map_err)?
                .iter()
                .map(|r| Ok((u32_of(get(r, "device_id")?)?, get::<i64>(r, "joined_day")?)))
                .collect::<Result<Vec<_>>>()?;
                let receiving: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM group_members WHERE group_id = $1")
                        .bind(&id)
                        .fetch_one(&mut **tx)
                        .await
                        .map_err(map_err)?;
                let (mut pending, mut bytes) = (0, 0);
                for (table, column) in [
                    ("group_messages", "group_number = (SELECT number FROM mls_groups WHERE id = $1)"),
                    ("group_welcomes", "group_id = $1"),
                ] {
                    let row = sqlx::query(&format!(
                        "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(LENGTH(content)), 0) AS BIGINT) AS bytes \
                         FROM {table} WHERE {column}"
                    ))
                    .bind(&id)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(map_err)?;
                    pending += u64_of(get(&row, "n")?)?;
                    bytes += u64_of(get(&row, "bytes")?)?;
                }
                groups.push(super::GroupExport {
                    group_id: id,
                    created_day: i64::try_from(u64_of(created_at_ms)? / DAY_MS).unwrap_or(i64::MAX),
                    devices,
                    receiving_devices: u64_of(receiving)?,
                    pending_messages: pending,
                    pending_bytes: bytes,
                });
            }
            Ok(groups)
        }
    };
}

/// The [`super::GroupStorage`] implementation for `$backend`.
macro_rules! group_methods {
    ($backend:ty) => {
        #[async_trait::async_trait]
        impl super::GroupStorage for $backend {
        #[tracing::instrument(skip_all)]
        async fn upload_key_packages(
            &self,
            device: DeviceAddress,
            key_packages: &[Vec<u8>],
            last_resort: Option<&[u8]>,
            max_stored: u32,
        ) -> Result<super::KeyPackageCounts> {
            let mut tx = self.group_tx().await?;
            let before = key_package_counts(&mut tx, device).await?;
            if u64::from(before.one_time) + key_packages.len() as u64 > u64::from(max_stored) {
                return store_nothing(tx, ()).await.and(Err(StorageError::QuotaExceeded));
            }
            for key_package in key_packages {
                sqlx::query(
                    "INSERT INTO key_packages (account_id, device_id, key_package) VALUES ($1, $2, $3)",
                )
                .bind(device.account)
                .bind(i64::from(device.device))
                .bind(key_package)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            if let Some(last_resort) = last_resort {
                sqlx::query(
                    "INSERT INTO last_resort_key_packages (account_id, device_id, key_package) \
                     VALUES ($1, $2, $3) ON CONFLICT (account_id, device_id) \
                     DO UPDATE SET key_package = excluded.key_package",
                )
                .bind(device.account)
                .bind(i64::from(device.device))
                .bind(last_resort)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            let after = key_package_counts(&mut tx, device).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(after)
        }

        #[tracing::instrument(skip_all)]
        async fn key_package_count(&self, device: DeviceAddress) -> Result<super::KeyPackageCounts> {
            let mut tx = self.pool.begin().await.map_err(map_err)?;
            let counts = key_package_counts(&mut tx, device).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(counts)
        }

        #[tracing::instrument(skip_all)]
        async fn take_key_packages(
            &self,
            username: &str,
            consume: bool,
        ) -> Result<Option<(AccountId, super::KeyPackages)>> {
            let mut tx = self.group_tx().await?;
            let Some(account) =
                sqlx::query_scalar::<_, i64>("SELECT id FROM accounts WHERE username = $1")
                    .bind(username)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?
            else {
                return store_nothing(tx, None).await;
            };
            let devices: Vec<i64> = sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE account_id = $1 ORDER BY device_id",
            )
            .bind(account)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            let mut found = super::KeyPackages {
                key_packages: Vec::with_capacity(devices.len()),
                missing_devices: Vec::new(),
                signed_device_list: Vec::new(),
            };
            for device in devices {
                let one_time: Option<Vec<u8>> = if consume {
                    sqlx::query_scalar(&format!(
                        "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
                         WHERE account_id = $1 AND device_id = $2 ORDER BY id LIMIT 1{SKIP_LOCKED}) \
                         RETURNING key_package"
                    ))
                    .bind(account)
                    .bind(device)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?
                } else {
                    None
                };
                let (key_package, is_last_resort) = match one_time {
                    Some(key_package) => (Some(key_package), false),
                    None => (
                        sqlx::query_scalar(
                            "SELECT key_package FROM last_resort_key_packages \
                             WHERE account_id = $1 AND device_id = $2",
                        )
                        .bind(account)
                        .bind(device)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(map_err)?,
                        true,
                    ),
                };
                match key_package {
                    Some(key_package) => found.key_packages.push(super::DeviceKeyPackage {
                        device_id: u32_of(device)?,
                        key_package,
                        is_last_resort,
                    }),
                    None => found.missing_devices.push(u32_of(device)?),
                }
            }
            found.signed_device_list =
                sqlx::query_scalar("SELECT signed_list FROM device_lists WHERE account = $1")
                    .bind(account)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .unwrap_or_default();
            tx.commit().await.map_err(map_err)?;
            Ok(Some((account, found)))
        }

        #[tracing::instrument(skip_all)]
        async fn create_group(
            &self,
            group_id: &[u8],
            creator: DeviceAddress,
            now_ms: u64,
            today: i64,
        ) -> Result<super::GroupCreate> {
            let mut tx = self.group_tx().await?;
            let inserted = sqlx::query(
                &format!(
                    "INSERT INTO mls_groups (id, epoch, creator_account, creator_device, \
                     created_at_ms, next_seq, number) VALUES ($1, 0, $2, $3, $4, 1, {NEW_GROUP_NUMBER}) \
                     ON CONFLICT (id) DO NOTHING"
                ),
            )
            .bind(group_id)
            .bind(creator.account)
            .bind(i64::from(creator.device))
            .bind(int(now_ms))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            let outcome = if inserted == 1 {
                sqlx::query(
                    "INSERT INTO group_members (group_id, account_id, device_id, joined_seq, \
                     cursor_seq, removed_at_seq, joined_day) VALUES ($1, $2, $3, 1, 0, NULL, $4)",
                )
                .bind(group_id)
                .bind(creator.account)
                .bind(i64::from(creator.device))
                .bind(today)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                super::GroupCreate::Created {
                    created_at_ms: now_ms,
                }
            } else {
                let row = sqlx::query(
                    "SELECT creator_account, creator_device, created_at_ms FROM mls_groups WHERE id = $1",
                )
                .bind(group_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
                let same = get::<i64>(&row, "creator_account")? == creator.account
                    && get::<i64>(&row, "creator_device")? == i64::from(creator.device);
                if same {
                    super::GroupCreate::Retried {
                        created_at_ms: u64_of(get(&row, "created_at_ms")?)?,
                    }
                } else {
                    super::GroupCreate::Taken
                }
            };
            tx.commit().await.map_err(map_err)?;
            Ok(outcome)
        }

        #[tracing::instrument(skip_all)]
        async fn commit_group(&self, commit: &super::NewCommit) -> Result<super::GroupWrite> {
            let message = &commit.message;
            let mut tx = self.group_tx().await?;
            let Some(group) = lock_group(&mut tx, &message.group_id).await? else {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            };
            let (epoch, seq) = (group.epoch, group.next_seq);
            if let Some(duplicate) = group_duplicate(&mut tx, &group, message).await? {
                return store_nothing(tx, duplicate).await;
            }
            if group_member(&mut tx, &message.group_id, message.sender).await? != Some(None) {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            }
            if message.epoch != epoch {
                let wrong = super::GroupWrite::WrongEpoch {
                    current_epoch: epoch,
                };
                return store_nothing(tx, wrong).await;
            }
            let next_epoch = epoch.saturating_add(1);
            insert_group_message(&mut tx, &group, message, next_epoch).await?;
            for removed in &commit.removed {
                sqlx::query(
                    "UPDATE group_members SET removed_at_seq = $1 WHERE group_id = $2 \
                     AND account_id = $3 AND device_id = $4 AND removed_at_seq IS NULL",
                )
                .bind(int(seq))
                .bind(&message.group_id)
                .bind(removed.account)
                .bind(i64::from(removed.device))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            if !commit.added.is_empty() {
                sqlx::query(
                    "INSERT INTO group_welcomes (group_id, seq, epoch, sender, sender_account, \
                     sender_device, message_id, content, server_timestamp_ms, expires_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&message.group_id)
                .bind(int(seq))
                .bind(int(next_epoch))
                .bind(&message.sender_name)
                .bind(message.sender.account)
                .bind(i64::from(message.sender.device))
                .bind(&message.message_id)
                .bind(&commit.welcome)
                .bind(int(message.server_timestamp_ms))
                .bind(int(message.expires_at_ms))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            for added in &commit.added {
                // A device added again (removed before, or listed twice)
                // starts over at this commit.
                sqlx::query(
                    "INSERT INTO group_members (group_id, account_id, device_id, joined_seq, \
                     cursor_seq, removed_at_seq, joined_day) VALUES ($1, $2, $3, $4, $5, NULL, $6) \
                     ON CONFLICT (group_id, account_id, device_id) DO UPDATE SET \
                     joined_seq = excluded.joined_seq, cursor_seq = excluded.cursor_seq, \
                     removed_at_seq = NULL, joined_day = excluded.joined_day",
                )
                .bind(&message.group_id)
                .bind(added.account)
                .bind(i64::from(added.device))
                .bind(int(seq.saturating_add(1)))
                .bind(int(seq.saturating_sub(1)))
                .bind(commit.today)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query(
                    "INSERT INTO group_welcome_recipients (group_id, seq, account_id, device_id) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&message.group_id)
                .bind(int(seq))
                .bind(added.account)
                .bind(i64::from(added.device))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            let wake = group_wake_list(&mut tx, &message.group_id, seq, message.sender).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(super::GroupWrite::Stored {
                seq,
                server_timestamp_ms: message.server_timestamp_ms,
                epoch: next_epoch,
                wake,
            })
        }

        #[tracing::instrument(skip_all)]
        async fn store_group_message(
            &self,
            message: &super::NewGroupMessage,
        ) -> Result<super::GroupWrite> {
            let mut tx = self.group_tx().await?;
            let Some(group) = lock_group(&mut tx, &message.group_id).await? else {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            };
            let (epoch, seq) = (group.epoch, group.next_seq);
            if let Some(duplicate) = group_duplicate(&mut tx, &group, message).await? {
                return store_nothing(tx, duplicate).await;
            }
            if group_member(&mut tx, &message.group_id, message.sender).await? != Some(None) {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            }
            if message.epoch != epoch {
                let wrong = super::GroupWrite::WrongEpoch {
                    current_epoch: epoch,
                };
                return store_nothing(tx, wrong).await;
            }
            insert_group_message(&mut tx, &group, message, epoch).await?;
            let wake = group_wake_list(&mut tx, &message.group_id, seq, message.sender).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(super::GroupWrite::Stored {
                seq,
                server_timestamp_ms: message.server_timestamp_ms,
                epoch,
                wake,
            })
        }

        #[tracing::instrument(skip_all)]
        async fn leave_group(&self, message: &super::NewGroupMessage) -> Result<super::GroupWrite> {
            let mut tx = self.group_tx().await?;
            let Some(group) = lock_group(&mut tx, &message.group_id).await? else {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            };
            let (epoch, seq) = (group.epoch, group.next_seq);
            if let Some(duplicate) = group_duplicate(&mut tx, &group, message).await? {
                return store_nothing(tx, duplicate).await;
            }
            if group_member(&mut tx, &message.group_id, message.sender)
                .await?
                .is_none()
            {
                return store_nothing(tx, super::GroupWrite::NotFound).await;
            }
            insert_group_message(&mut tx, &group, message, epoch).await?;
            sqlx::query(
                "DELETE FROM group_members WHERE group_id = $1 AND account_id = $2 AND device_id = $3",
            )
            .bind(&message.group_id)
            .bind(message.sender.account)
            .bind(i64::from(message.sender.device))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            sqlx::query(
                "DELETE FROM group_welcome_recipients WHERE group_id = $1 AND account_id = $2 \
                 AND device_id = $3",
            )
            .bind(&message.group_id)
            .bind(message.sender.account)
            .bind(i64::from(message.sender.device))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let wake = group_wake_list(&mut tx, &message.group_id, seq, message.sender).await?;
            tx.commit().await.map_err(map_err)?;
            Ok(super::GroupWrite::Stored {
                seq,
                server_timestamp_ms: message.server_timestamp_ms,
                epoch,
                wake,
            })
        }

        #[tracing::instrument(skip_all)]
        async fn receiving_groups(&self, device: DeviceAddress) -> Result<Vec<Vec<u8>>> {
            sqlx::query_scalar(
                "SELECT group_id FROM group_members WHERE account_id = $1 AND device_id = $2 \
                 ORDER BY group_id",
            )
            .bind(device.account)
            .bind(i64::from(device.device))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)
        }

        #[tracing::instrument(skip_all)]
        async fn pending_group_messages(
            &self,
            device: DeviceAddress,
            group_id: &[u8],
            after_seq: u64,
            limit: u32,
            now_ms: u64,
        ) -> Result<Vec<super::StoredGroupMessage>> {
            let welcomes = sqlx::query(
                "SELECT w.group_id, w.seq, w.epoch, w.sender, w.sender_account, w.sender_device, \
                 w.content, w.message_id, w.server_timestamp_ms FROM group_welcome_recipients r \
                 JOIN group_welcomes w ON w.group_id = r.group_id AND w.seq = r.seq \
                 WHERE r.group_id = $1 AND r.account_id = $2 AND r.device_id = $3 AND r.seq > $4 \
                 AND w.expires_at_ms > $5 ORDER BY r.seq LIMIT $6",
            )
            .bind(group_id)
            .bind(device.account)
            .bind(i64::from(device.device))
            .bind(int(after_seq))
            .bind(int(now_ms))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            // One lower bound for the key range: given three, SQLite picks
            // one, and from the cursor it would step over every large commit
            // since (0.19 ms instead of 0.005 ms per wake-up at 1,000 members).
            let messages = sqlx::query(&format!(
                "SELECT g.id AS group_id, m.seq, m.kind, m.epoch, \
                 COALESCE(m.sender, a.username, '') AS sender, m.sender_account, m.sender_device, \
                 m.content, m.message_id, m.server_timestamp_ms \
                 FROM group_members gm \
                 JOIN mls_groups g ON g.id = gm.group_id \
                 JOIN group_messages m ON m.group_number = g.number \
                 LEFT JOIN accounts a ON a.id = m.sender_account \
                 WHERE gm.group_id = $1 AND gm.account_id = $2 AND gm.device_id = $3 \
                 AND m.seq > {GREATEST}($4, gm.cursor_seq, gm.joined_seq - 1) \
                 AND (gm.removed_at_seq IS NULL OR m.seq <= gm.removed_at_seq) \
                 AND NOT (m.sender_account = $2 AND m.sender_device = $3) \
                 AND (m.expires_at_ms IS NULL OR m.expires_at_ms > $5) ORDER BY m.seq LIMIT $6"
            ))
            .bind(group_id)
            .bind(device.account)
            .bind(i64::from(device.device))
            .bind(int(after_seq))
            .bind(int(now_ms))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
            let mut pending = Vec::with_capacity(welcomes.len() + messages.len());
            for row in &welcomes {
                pending.push(group_message_of(row, Some(super::WELCOME_KIND))?);
            }
            for row in &messages {
                pending.push(group_message_of(row, None)?);
            }
            // A Welcome sits below every seq its device gets after it.
            pending.sort_by_key(|m| m.seq);
            pending.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            Ok(pending)
        }

        #[tracing::instrument(skip_all, fields(acks = acks.len()))]
        async fn acknowledge_group(
            &self,
            device: DeviceAddress,
            acks: &[(Vec<u8>, u64)],
        ) -> Result<()> {
            if acks.is_empty() {
                return Ok(());
            }
            let mut touched = Vec::new();
            let mut tx = self.group_tx().await?;
            for (group_id, seq) in acks {
                let row = sqlx::query(
                    "SELECT gm.cursor_seq, gm.removed_at_seq, g.next_seq FROM group_members gm \
                     JOIN mls_groups g ON g.id = gm.group_id \
                     WHERE gm.group_id = $1 AND gm.account_id = $2 AND gm.device_id = $3",
                )
                .bind(group_id)
                .bind(device.account)
                .bind(i64::from(device.device))
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
                let Some(row) = row else { continue };
                let cursor = u64_of(get(&row, "cursor_seq")?)?;
                let removed_at = get::<Option<i64>>(&row, "removed_at_seq")?
                    .map(u64_of)
                    .transpose()?;
                let last = u64_of(get(&row, "next_seq")?)?.saturating_sub(1);
                let capped = (*seq).min(last).min(removed_at.unwrap_or(u64::MAX));
                let cursor = cursor.max(capped);
                sqlx::query(
                    "UPDATE group_members SET cursor_seq = $1 WHERE group_id = $2 AND account_id = $3 \
                     AND device_id = $4 AND cursor_seq < $1",
                )
                .bind(int(cursor))
                .bind(group_id)
                .bind(device.account)
                .bind(i64::from(device.device))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                sqlx::query(
                    "DELETE FROM group_welcome_recipients WHERE group_id = $1 AND account_id = $2 \
                     AND device_id = $3 AND seq <= $4",
                )
                .bind(group_id)
                .bind(device.account)
                .bind(i64::from(device.device))
                .bind(int(cursor))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if removed_at.is_some_and(|at| cursor >= at) {
                    sqlx::query(
                        "DELETE FROM group_members WHERE group_id = $1 AND account_id = $2 \
                         AND device_id = $3",
                    )
                    .bind(group_id)
                    .bind(device.account)
                    .bind(i64::from(device.device))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                touched.push(group_id.as_slice());
            }
            tx.commit().await.map_err(map_err)?;
            // Apart from the cursor moves, so concurrent acknowledgements of
            // one group do not hold each other's rows; the purge catches up
            // whatever a failure here leaves.
            touched.sort();
            touched.dedup();
            for group_id in touched {
                group_gc(&self.pool, Some(group_id)).await?;
            }
            Ok(())
        }
        }
    };
}

pub(super) use {group_helpers, group_methods};
