//! High availability (issue 11): an active/standby pair of agents, one per management
//! host, elect their leader through etcd (crate `etcd-client`); no consensus of our own.
//!
//! - Each agent holds a lease (`[ha] lease_ttl_s`) and campaigns with it on the election
//!   `<prefix>/leader` (etcd's election service). The holder of the oldest key leads.
//! - Only the leader acts. The standby polls every device like the leader (hot: its
//!   snapshot is fresh the moment it takes over) but never writes to one.
//! - The leader keeps its own deadline: a keep-alive sent at `t` and answered extends
//!   it to `t + 2/3 TTL`. etcd counts the TTL from when it *received* that keep-alive,
//!   later than `t`, so the leader stops acting at least a third of the TTL before its
//!   lease can expire and the standby can be elected: a partitioned leader has gone
//!   quiet before anyone else starts. The margin also covers a command already on the
//!   wire (miner commands time out in seconds).
//! - Fencing: an action carries the revision of the leader key it was decided under
//!   ([`Leadership::fence`]). Just before the wire the actuator asks [`Ha::may_act`],
//!   which refuses it when that leadership has ended or its deadline passed.
//! - The control intent (who is shed, since when, the cycle history) lives beside the
//!   lease in `<prefix>/intent`, written in a transaction that only succeeds while this
//!   agent's leader key is the one with that revision: a stale leader cannot overwrite
//!   its successor's intent. A new leader reads it before its first action, so a
//!   takeover neither wakes the miners its predecessor shed nor forgets when.
//!
//! Time here is real time (`tokio::time`), whatever the agent's virtual clock speed: the
//! lease is counted by etcd in real seconds.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalogue::AlertKind;
use crate::control::{Alert, Severity};
use crate::status::StatusHub;

/// Errors of the etcd side; each names the endpoints or the key.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: no answer within {ms} ms ({what})")]
    Timeout {
        endpoints: String,
        ms: u128,
        what: &'static str,
    },
    #[error("not the leader (any more): the intent at {key} was not written")]
    NotLeader { key: String },
    #[error("no etcd connection yet")]
    NotConnected,
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the intent is {bytes} bytes compressed, over the {max} bytes etcd takes")]
    TooLarge { bytes: usize, max: usize },
}

/// The largest intent value stored (compressed): etcd refuses requests over 1.5 MiB by
/// default (`--max-request-bytes`); this leaves room for the transaction around it.
pub const MAX_INTENT_BYTES: usize = 1024 * 1024;

/// The intent as stored in etcd: gzipped JSON (the state of most miners is the same
/// few dozen bytes, so a 100 MW site's intent shrinks ~40x).
pub fn encode_intent(json: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(json)?;
    z.finish()
}

/// The JSON of a stored intent (gzipped, or plain JSON as an operator may have put it).
pub fn decode_intent(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        // Bounded: a corrupt or hostile value must not inflate without end.
        flate2::read::GzDecoder::new(bytes)
            .take(256 * 1024 * 1024)
            .read_to_end(&mut out)?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// One term of leadership: the fence its actions carry and the deadline it acts until.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Revision at which this agent's leader key was created: unique per term, growing.
    pub fence: i64,
    /// Acting stops at this instant unless a keep-alive extends it.
    pub until: Instant,
    key: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    leader: Option<Leadership>,
    client: Option<Client>,
    etcd_down_alerted: bool,
    unsaved_alerted: bool,
}

/// The agent's side of the election. Shared by the control loop and the actuator.
pub struct Ha {
    cfg: rackwarden_config::Ha,
    hub: Arc<StatusHub>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Ha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ha")
            .field("node", &self.cfg.node)
            .field("prefix", &self.cfg.prefix)
            .field("role", &self.role())
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn raise(hub: &StatusHub, name: AlertKind, severity: Severity, node: &str, message: String) {
    let mut a = Alert::new(name, severity, message);
    a.device = Some(node.to_owned());
    let now = hub.last_now();
    hub.raise(now, &a);
}

impl Ha {
    /// Starts campaigning; the returned handle says whether this agent may act. The task
    /// ends when `cancel` fires, revoking the lease so the other agent takes over at once.
    ///
    /// Operator overrides are kept the same on both agents through `<prefix>/overrides`
    /// (an override set on either holds after a takeover); `overrides_file` is where
    /// this agent keeps its local copy.
    pub fn start(
        cfg: rackwarden_config::Ha,
        hub: Arc<StatusHub>,
        overrides_file: std::path::PathBuf,
        cancel: CancellationToken,
    ) -> (Arc<Ha>, tokio::task::JoinHandle<()>) {
        hub.set_role(Some("standby"));
        let ha = Arc::new(Ha {
            cfg,
            hub,
            inner: Mutex::new(Inner::default()),
        });
        tokio::spawn(sync_overrides(ha.clone(), overrides_file, cancel.clone()));
        let task = tokio::spawn(election(ha.clone(), cancel));
        (ha, task)
    }

    /// This agent's name in the pair.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.lease_ttl_s)
    }

    /// How long a single etcd call may take before it counts as a failure.
    fn call_timeout(&self) -> Duration {
        self.ttl() / 3
    }

    fn endpoints(&self) -> String {
        self.cfg.etcd_endpoints.join(",")
    }

    fn intent_key(&self) -> String {
        format!("{}/intent", self.cfg.prefix)
    }

    fn election_name(&self) -> String {
        format!("{}/leader", self.cfg.prefix)
    }

    /// The current term, if this agent leads and its deadline has not passed.
    pub fn leadership(&self) -> Option<Leadership> {
        let g = lock(&self.inner);
        g.leader
            .as_ref()
            .filter(|l| Instant::now() < l.until)
            .cloned()
    }

    /// `leader` or `standby`.
    pub fn role(&self) -> &'static str {
        if self.leadership().is_some() {
            "leader"
        } else {
            "standby"
        }
    }

    /// Fencing: whether an action decided under `fence` may still go on the wire.
    pub fn may_act(&self, fence: i64) -> bool {
        self.leadership().is_some_and(|l| l.fence == fence)
    }

    /// Ends the current term (the deadline passed, the lease is gone, or another
    /// agent's key is in place). Idempotent.
    pub fn step_down(&self, why: &str) {
        let was = lock(&self.inner).leader.take();
        if let Some(l) = was {
            self.hub.set_role(Some("standby"));
            raise(
                &self.hub,
                AlertKind::HaLeaderLost,
                Severity::Critical,
                &self.cfg.node,
                format!("{} stops acting (term {}): {why}", self.cfg.node, l.fence),
            );
        }
    }

    fn client(&self) -> Result<Client, HaError> {
        lock(&self.inner)
            .client
            .clone()
            .ok_or(HaError::NotConnected)
    }

    async fn timed<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, HaError> {
        let limit = self.call_timeout();
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(HaError::Etcd {
                endpoints: self.endpoints(),
                source,
            }),
            Err(_) => Err(HaError::Timeout {
                endpoints: self.endpoints(),
                ms: limit.as_millis(),
                what,
            }),
        }
    }

    /// The intent the last leader stored (`None`: no leader ever stored one).
    pub async fn read_intent(&self) -> Result<Option<Vec<u8>>, HaError> {
        let mut c = self.client()?;
        let key = self.intent_key();
        let r = self.timed("read intent", c.get(key, None)).await?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Stores the intent under `fence`; refused (and the term ended) if this agent's
    /// leader key is no longer the one created at `fence`.
    pub async fn store_intent(&self, fence: i64, bytes: Vec<u8>) -> Result<(), HaError> {
        let Some(l) = lock(&self.inner)
            .leader
            .clone()
            .filter(|l| l.fence == fence)
        else {
            return Err(HaError::NotLeader {
                key: self.intent_key(),
            });
        };
        if bytes.len() > MAX_INTENT_BYTES {
            let e = HaError::TooLarge {
                bytes: bytes.len(),
                max: MAX_INTENT_BYTES,
            };
            return Err(self.unsaved(e));
        }
        let mut c = self.client()?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                l.key.clone(),
                CompareOp::Equal,
                fence,
            )])
            .and_then([TxnOp::put(self.intent_key(), bytes, None)]);
        let r = self.timed("store intent", c.txn(txn)).await;
        match r {
            Ok(r) if r.succeeded() => {
                if std::mem::take(&mut lock(&self.inner).unsaved_alerted) {
                    info!(
                        event = "ha.intent.saved",
                        "control intent stored in etcd again"
                    );
                }
                Ok(())
            }
            Ok(_) => {
                self.step_down("its leader key is gone: another agent may lead");
                Err(HaError::NotLeader {
                    key: self.intent_key(),
                })
            }
            Err(e) => Err(self.unsaved(e)),
        }
    }

    /// Says once per outage that the intent could not be stored; returns the error.
    fn unsaved(&self, e: HaError) -> HaError {
        if !std::mem::replace(&mut lock(&self.inner).unsaved_alerted, true) {
            raise(
                &self.hub,
                AlertKind::HaIntentUnsaved,
                Severity::Warning,
                &self.cfg.node,
                format!("control intent not stored in etcd: {e}"),
            );
        }
        e
    }

    fn etcd_trouble(&self, e: &HaError) {
        let first = !std::mem::replace(&mut lock(&self.inner).etcd_down_alerted, true);
        if first {
            raise(
                &self.hub,
                AlertKind::HaEtcdUnreachable,
                Severity::Warning,
                &self.cfg.node,
                format!("{e}; this agent cannot lead until etcd answers"),
            );
        } else {
            warn!(node = %self.cfg.node, error = %e, "etcd still unreachable");
        }
    }

    fn etcd_fine(&self) {
        if std::mem::take(&mut lock(&self.inner).etcd_down_alerted) {
            info!(event = "ha.etcd.reachable", node = %self.cfg.node, "etcd answers again");
        }
    }
}

/// Keeps the operator overrides the same on both agents: a change made here (over this
/// agent's HTTP API) is published to `<prefix>/overrides`; a change published by the
/// other agent is loaded here and written to the local overrides file. Polled every
/// second; when both change within the same second, the last writer wins.
async fn sync_overrides(ha: Arc<Ha>, file: std::path::PathBuf, cancel: CancellationToken) {
    use crate::status::OverrideSet;
    let key = format!("{}/overrides", ha.cfg.prefix);
    // What etcd held at the last sync (None: not synced yet: etcd's copy wins over a
    // local file that may be older than the other agent's changes).
    let mut synced: Option<OverrideSet> = None;
    let mut iv = tokio::time::interval(Duration::from_secs(1));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = iv.tick() => {}
        }
        let Ok(mut c) = ha.client() else { continue };
        let local = ha.hub.override_set();
        if synced.as_ref().is_some_and(|s| *s != local) {
            let Ok(bytes) = serde_json::to_vec(&local) else {
                continue;
            };
            if ha
                .timed("store overrides", c.put(key.clone(), bytes, None))
                .await
                .is_ok()
            {
                info!(event = "ha.overrides.published", node = %ha.cfg.node, "operator overrides published to the pair");
                synced = Some(local);
            }
            continue;
        }
        let Ok(r) = ha.timed("read overrides", c.get(key.clone(), None)).await else {
            // The election reports etcd trouble; try again next second.
            continue;
        };
        match r
            .kvs()
            .first()
            .map(|kv| serde_json::from_slice::<OverrideSet>(kv.value()))
        {
            Some(Ok(remote)) => {
                if remote != local {
                    ha.hub.load_overrides(remote.clone());
                    if let Err(e) = crate::store::file::write_atomic(&file, &remote) {
                        warn!(file = %file.display(), error = %e, "overrides from the pair not saved locally");
                    }
                    info!(
                        event = "ha.overrides.synced",
                        node = %ha.cfg.node,
                        miners = remote.miners.len(),
                        racks = remote.racks.len(),
                        units = remote.units.len(),
                        "operator overrides taken from the pair"
                    );
                }
                synced = Some(remote);
            }
            Some(Err(e)) => {
                warn!(key = %key, error = %e, "overrides stored in etcd unreadable; keeping this agent's");
            }
            None => {
                // Nobody published yet: ours become the pair's.
                if let Ok(bytes) = serde_json::to_vec(&local) {
                    if ha
                        .timed("store overrides", c.put(key.clone(), bytes, None))
                        .await
                        .is_ok()
                    {
                        synced = Some(local);
                    }
                }
            }
        }
    }
}

/// TLS (CA, client certificate) and etcd user from `[ha]`, the files read now (each
/// connection attempt: a rotated certificate or password is picked up at the next one).
fn connect_options(cfg: &rackwarden_config::Ha) -> Result<ConnectOptions, HaError> {
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| HaError::File {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let mut opts = ConnectOptions::new();
    if let Some(tls) = &cfg.tls {
        let ca = read("the etcd CA file", &tls.ca_file)?;
        let mut t =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if let Some((cert, key)) = &tls.client {
            let cert = read("the etcd client certificate", cert)?;
            let key = read("the etcd client key", key)?;
            t = t.identity(etcd_client::Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(t);
    }
    if let Some(auth) = &cfg.auth {
        let text = read("the etcd password file", &auth.password_file)?;
        let password = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end()
            .to_owned();
        opts = opts.with_user(auth.user.clone(), password);
    }
    Ok(opts)
}

/// The election task: connect, hold a lease, campaign, keep the lease and the deadline
/// alive; on any failure end the term and start over with a new lease.
async fn election(ha: Arc<Ha>, cancel: CancellationToken) {
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match term(&ha, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                // `term` has already ended any leadership, before giving the lease back.
                ha.step_down(&e.to_string());
                ha.etcd_trouble(&e);
            }
        }
        // Retry at a third of the TTL: soon enough to stand by again well inside one
        // TTL, slow enough not to hammer a cluster that is down.
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(ha.call_timeout()) => {}
        }
    }
}

/// One lease's life. Ok(()) on cancel (lease revoked), Err on any etcd failure.
async fn term(ha: &Arc<Ha>, cancel: &CancellationToken) -> Result<(), HaError> {
    let timeout = ha.call_timeout();
    let opts = connect_options(&ha.cfg)?
        .with_connect_timeout(timeout)
        .with_keep_alive(timeout, timeout);
    let client = ha
        .timed(
            "connect",
            Client::connect(ha.cfg.etcd_endpoints.clone(), Some(opts)),
        )
        .await?;
    lock(&ha.inner).client = Some(client.clone());
    let ttl_s = i64::try_from(ha.cfg.lease_ttl_s).unwrap_or(10);
    let mut lease_c = client.lease_client();
    let granted_at = Instant::now();
    let grant = ha.timed("grant lease", lease_c.grant(ttl_s, None)).await?;
    let lease = grant.id();
    // The TTL etcd actually granted (it may raise a short one to its minimum).
    let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(ha.cfg.lease_ttl_s));
    let hold = ttl * 2 / 3;
    ha.etcd_fine();
    info!(event = "ha.campaign", node = %ha.cfg.node, lease, ttl_s = ttl.as_secs(), "standing for leader");
    let (mut keeper, mut stream) = ha
        .timed("keep-alive stream", lease_c.keep_alive(lease))
        .await?;
    let mut last_ok = granted_at;
    let mut election_c = client.election_client();
    let name = ha.election_name();
    let node = ha.cfg.node.clone();
    let campaign = election_c.campaign(name, node, lease);
    tokio::pin!(campaign);
    let mut campaigning = true;
    let mut renew = tokio::time::interval(ttl / 4);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: Result<(), HaError> = loop {
        // Leader or standby, a lease not renewed within 2/3 of its TTL ends the term:
        // the leader stops acting, the standby starts over with a new lease.
        let deadline = last_ok + hold;
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            () = tokio::time::sleep_until(deadline) => {
                break Err(HaError::Timeout {
                    endpoints: ha.endpoints(),
                    ms: hold.as_millis(),
                    what: "lease renewal (own deadline passed)",
                });
            }
            _ = renew.tick() => {
                let sent = Instant::now();
                let ok = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match ha.timed("keep-alive", ok).await {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        last_ok = sent;
                        if let Some(l) = lock(&ha.inner).leader.as_mut() {
                            l.until = l.until.max(sent + hold);
                        }
                    }
                    Ok(_) => {
                        break Err(HaError::Timeout {
                            endpoints: ha.endpoints(),
                            ms: ttl.as_millis(),
                            what: "lease expired",
                        })
                    }
                    // One missed renewal is not the end: the deadline decides.
                    Err(e) => warn!(node = %ha.cfg.node, error = %e, "lease keep-alive failed"),
                }
            }
            r = &mut campaign, if campaigning => {
                campaigning = false;
                let key = match r {
                    Ok(r) => r.leader().map(|k| (k.rev(), k.key().to_vec())),
                    Err(source) => break Err(HaError::Etcd { endpoints: ha.endpoints(), source }),
                };
                let Some((fence, key)) = key else {
                    break Err(HaError::Timeout { endpoints: ha.endpoints(), ms: 0, what: "campaign answered without a leader key" });
                };
                let until = last_ok + hold;
                if Instant::now() >= until {
                    // Elected on a lease we can no longer vouch for: start over.
                    break Err(HaError::Timeout { endpoints: ha.endpoints(), ms: hold.as_millis(), what: "elected after own deadline" });
                }
                lock(&ha.inner).leader = Some(Leadership { fence, until, key });
                ha.hub.set_role(Some("leader"));
                raise(
                    &ha.hub,
                    AlertKind::HaLeaderAcquired,
                    Severity::Info,
                    &ha.cfg.node,
                    format!("{} leads (term {fence}, lease ttl {} s)", ha.cfg.node, ttl.as_secs()),
                );
            }
        }
    };
    // Whatever ended the term: stop acting first, then give the lease back so the other
    // agent need not wait for it to expire (best effort: etcd may be the problem).
    match &result {
        Ok(()) => ha.step_down("shutting down"),
        Err(e) => ha.step_down(&e.to_string()),
    }
    let mut lease_c = client.lease_client();
    tokio::time::timeout(timeout, lease_c.revoke(lease))
        .await
        .ok();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ha() -> Ha {
        Ha {
            cfg: rackwarden_config::Ha {
                etcd_endpoints: vec!["http://127.0.0.1:1".into()],
                node: "mgmt-a".into(),
                prefix: "/rackwarden/t".into(),
                lease_ttl_s: 3,
                tls: None,
                auth: None,
            },
            hub: StatusHub::new(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lead(h: &Ha, fence: i64, for_ms: u64) {
        lock(&h.inner).leader = Some(Leadership {
            fence,
            until: Instant::now() + Duration::from_millis(for_ms),
            key: b"/rackwarden/t/leader/1".to_vec(),
        });
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_current_term_may_act_and_only_until_its_deadline() {
        let h = ha();
        assert!(!h.may_act(7), "a standby never acts");
        assert_eq!(h.role(), "standby");
        lead(&h, 7, 2_000);
        assert!(h.may_act(7));
        assert!(!h.may_act(6), "an action of an earlier term is fenced");
        assert_eq!(h.role(), "leader");
        tokio::time::sleep(Duration::from_millis(1_999)).await;
        assert!(h.may_act(7));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The deadline passed with no renewal: acting stops by itself, before any
        // task notices (the lease still has a third of its TTL to run in etcd).
        assert!(!h.may_act(7));
        assert_eq!(h.role(), "standby");
    }

    #[tokio::test(start_paused = true)]
    async fn stepping_down_ends_the_term_and_tells_the_status_hub() {
        let h = ha();
        lead(&h, 9, 10_000);
        h.hub.set_role(Some("leader"));
        h.step_down("test");
        assert!(!h.may_act(9));
        assert_eq!(h.hub.role(), Some("standby"));
        h.step_down("again");
        assert_eq!(h.hub.role(), Some("standby"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_leader_cannot_store_intent() {
        let h = ha();
        let e = h.store_intent(3, b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(e, HaError::NotLeader { .. }), "{e}");
        lead(&h, 4, 1_000);
        let e = h.store_intent(3, b"{}".to_vec()).await.unwrap_err();
        assert!(
            matches!(e, HaError::NotLeader { .. }),
            "term 3 is over: {e}"
        );
        // Term 4 is current, but no etcd connection exists: a clear error, not a write.
        let e = h.store_intent(4, b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(e, HaError::NotConnected), "{e}");
        // An intent over etcd's request limit is refused here, not sent to be refused.
        let e = h
            .store_intent(4, vec![0; MAX_INTENT_BYTES + 1])
            .await
            .unwrap_err();
        assert!(matches!(e, HaError::TooLarge { .. }), "{e}");
    }
}
