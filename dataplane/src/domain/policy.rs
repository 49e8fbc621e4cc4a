//! SecurityContext policy: which tool calls a session's context allows (reference §5.4).
//!
//! This follows upstream's evaluation order but fixes the defects listed in reference §13.1 item
//! 14: any matching capability may allow a call (upstream stopped at the first), `prefix.*`
//! matches on the dot boundary, paths are normalised before the allowlist check, domains are
//! matched on label boundaries, and `rate_limit`, `max_concurrent` and `max_response_size` are
//! enforced (the last two through the returned [`Grant`]: its permit is held while the call runs,
//! and the executor applies the size).
//!
//! Everything here is pure except [`RateLimiter`] and [`ConcurrencyLimiter`], which keep counters
//! behind short-lived locks, and the [`Limits`] that [`evaluate`] takes `max_concurrent` slots
//! and `rate_limit` quota from; time is always passed in so behaviour is deterministic under
//! test.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aegis_seal_crds::{Capability, RateLimit, SecurityContextEntry};
use serde_json::Value;

/// The audit event of a call a policy refused.
pub const POLICY_VIOLATION_BLOCKED: &str = "PolicyViolationBlocked";

/// A refused call: the SEAL code and message of reference §5.4 (all answered 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// 2001 `tool denied: <t>`: the tool matched the context's deny list.
    ToolDenied { tool: String },
    /// 2000 `tool not allowed: <t>`: no capability's pattern matched the tool.
    ToolNotAllowed { tool: String },
    /// 2002 `path outside boundary: <p>`: `<p>` is the path as the caller sent it.
    PathOutsideBoundary { path: String },
    /// 2003 `command not allowed: <c>`: `<c>` is the base command (first token).
    CommandNotAllowed { command: String },
    /// 2003 `subcommand not allowed: <base> <sub>`: `<sub>` is empty when there was none.
    SubcommandNotAllowed { base: String, sub: String },
    /// 2004 `domain not allowed: <d>`: `<d>` is the normalised host (see [`evaluate`]).
    DomainNotAllowed { domain: String },
    /// 2005 `rate limit exceeded: <t> (<calls> calls per <per_seconds> s)`.
    RateLimitExceeded {
        tool: String,
        calls: u32,
        per_seconds: u32,
    },
    /// 2005 `concurrent execution limit exceeded: <t> (<limit> running)`: the session already
    /// has `max_concurrent` calls of this capability running.
    ConcurrentExecLimitExceeded { tool: String, limit: u32 },
}

impl Violation {
    /// The SEAL error code of reference §5.4. 2005 (the RFC's rate limit code) is ours, since
    /// upstream never enforced limits; a concurrency limit is one too, so it shares the code and
    /// a client backs off from both alike.
    pub fn code(&self) -> u32 {
        match self {
            Self::ToolNotAllowed { .. } => 2000,
            Self::ToolDenied { .. } => 2001,
            Self::PathOutsideBoundary { .. } => 2002,
            Self::CommandNotAllowed { .. } | Self::SubcommandNotAllowed { .. } => 2003,
            Self::DomainNotAllowed { .. } => 2004,
            Self::RateLimitExceeded { .. } | Self::ConcurrentExecLimitExceeded { .. } => 2005,
        }
    }

    /// The SEAL error message; clients and runbooks match on these texts, so they are exact.
    pub fn message(&self) -> String {
        match self {
            Self::ToolDenied { tool } => format!("tool denied: {tool}"),
            Self::ToolNotAllowed { tool } => format!("tool not allowed: {tool}"),
            Self::PathOutsideBoundary { path } => format!("path outside boundary: {path}"),
            Self::CommandNotAllowed { command } => format!("command not allowed: {command}"),
            Self::SubcommandNotAllowed { base, sub } => {
                format!("subcommand not allowed: {base} {sub}")
            }
            Self::DomainNotAllowed { domain } => format!("domain not allowed: {domain}"),
            Self::RateLimitExceeded {
                tool,
                calls,
                per_seconds,
            } => format!("rate limit exceeded: {tool} ({calls} calls per {per_seconds} s)"),
            Self::ConcurrentExecLimitExceeded { tool, limit } => {
                format!("concurrent execution limit exceeded: {tool} ({limit} running)")
            }
        }
    }

    /// `aegis_tool_policy_violations_total{violation_type}` label: tool_not_allowed, tool_denied,
    /// path_outside_boundary, domain_not_allowed, command_not_allowed, subcommand_not_allowed,
    /// rate_limit_exceeded, concurrent_exec_limit_exceeded (upstream's label for the variant it
    /// defined and never raised). Static so the metric's label set stays bounded.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::ToolDenied { .. } => "tool_denied",
            Self::ToolNotAllowed { .. } => "tool_not_allowed",
            Self::PathOutsideBoundary { .. } => "path_outside_boundary",
            Self::CommandNotAllowed { .. } => "command_not_allowed",
            Self::SubcommandNotAllowed { .. } => "subcommand_not_allowed",
            Self::DomainNotAllowed { .. } => "domain_not_allowed",
            Self::RateLimitExceeded { .. } => "rate_limit_exceeded",
            Self::ConcurrentExecLimitExceeded { .. } => "concurrent_exec_limit_exceeded",
        }
    }
}

/// What an allowed call may do: the tightest `max_response_size` of the capabilities that allowed
/// it (None = unbounded), for the executor to enforce, and the running slot it holds when the
/// allowing capability sets `max_concurrent`, to keep until the call has answered and then give
/// back through [`Slots::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct Grant<P = RunningPermit> {
    pub max_response_size: Option<u64>,
    pub running: Option<P>,
}

impl<P> Default for Grant<P> {
    fn default() -> Self {
        Self {
            max_response_size: None,
            running: None,
        }
    }
}

/// Why [`evaluate`] did not allow a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<E> {
    /// The policy refuses it (403).
    Policy(Violation),
    /// A `rate_limit` or `max_concurrent` had to be consulted and its [`Limits`] could not
    /// answer.
    LimitUnavailable(E),
}

/// `*` matches all; `prefix.*` matches names starting with `prefix.` (on the dot boundary:
/// `fs.*` matches `fs.read` and NOT `fsx` nor `fs`); anything else is exact. Used for deny lists
/// and capability tool patterns.
///
/// The dot boundary matters because upstream's raw prefix let `fs.*` cover an unrelated `fsx`
/// tool, widening grants and (in deny lists) refusing tools nobody meant to refuse.
pub fn tool_pattern_matches(pattern: &str, tool: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(namespace) => tool
            .strip_prefix(namespace)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|name| !name.is_empty()),
        None => pattern == tool,
    }
}

/// Session `allowed_tool_patterns` (reference §1.5 step 21): `*` alone matches all; a pattern
/// with `*` splits at the FIRST `*` into prefix/suffix, match = starts_with(prefix) &&
/// ends_with(suffix) && len >= prefix+suffix; else exact. Empty list allows nothing.
///
/// This is deliberately a different language from [`tool_pattern_matches`]: session patterns
/// come from the session API and keep upstream's meaning. The length check stops the prefix and
/// suffix from overlapping (`ab*ba` must not match `aba`).
pub fn session_allows(patterns: &[String], tool: &str) -> bool {
    patterns.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        match pattern.split_once('*') {
            Some((prefix, suffix)) => {
                tool.len() >= prefix.len() + suffix.len()
                    && tool.starts_with(prefix)
                    && tool.ends_with(suffix)
            }
            None => pattern == tool,
        }
    })
}

/// Limits at or below this many calls keep one log entry per call, so they are exact.
const EXACT_LOG_CALLS: u32 = 64;
/// Larger limits merge calls into slots of `window / LOG_SLOTS`, bounding memory per key.
const LOG_SLOTS: u32 = 64;
/// Sweep for idle keys every `max(keys after the last sweep, this)` checks.
const MIN_SWEEP_INTERVAL: usize = 64;

/// Calls made in `[first, last]`, all treated as if made at `last`.
///
/// Treating them as made at the latest moment makes them expire late, never early, so merging
/// can only make the limiter stricter than the exact sliding log, never looser.
#[derive(Debug, Clone, Copy)]
struct Slot {
    first: Instant,
    last: Instant,
    count: u32,
}

/// One key's sliding log.
#[derive(Debug)]
struct KeyLog {
    slots: VecDeque<Slot>,
    /// Sum of `slots[..].count`, so a check does not walk the log.
    total: u64,
    /// The window of the latest check, so the sweeper knows when the key is idle.
    window: Duration,
}

impl KeyLog {
    fn drop_expired(&mut self, now: Instant) {
        while let Some(front) = self.slots.front() {
            if now.saturating_duration_since(front.last) < self.window {
                break;
            }
            self.total -= u64::from(front.count);
            self.slots.pop_front();
        }
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.slots
            .back()
            .is_none_or(|slot| now.saturating_duration_since(slot.last) >= self.window)
    }
}

#[derive(Debug, Default)]
struct LimiterState {
    keys: HashMap<String, KeyLog>,
    checks_since_sweep: usize,
    /// Keys left by the last sweep; the next sweep waits for that many checks (at least 64).
    /// Measured at the sweep, not live: a live length grows with every new key and would
    /// always stay ahead of the check count.
    len_after_sweep: usize,
}

impl LimiterState {
    /// Forgets every key whose calls have all left their window: such a key would allow its next
    /// call exactly as a fresh one does, so dropping it changes no decision.
    fn sweep(&mut self, now: Instant) {
        self.keys.retain(|_, log| !log.is_idle(now));
        self.checks_since_sweep = 0;
        self.len_after_sweep = self.keys.len();
        // Give back the table after a burst of keys, or the memory stays at its peak.
        let floor = self.keys.len().max(MIN_SWEEP_INTERVAL);
        if self.keys.capacity() > 4 * floor {
            self.keys.shrink_to(2 * floor);
        }
    }
}

/// Where a capability's `rate_limit` quota is counted.
///
/// [`RateLimiter`] counts in this process, which is exact for a gateway that serves its sessions
/// alone. Replicas sharing a database count there instead
/// (`infrastructure::persistence::RateLimits`), so a session has one quota whichever replica its
/// calls reach.
pub trait Quota {
    /// Why the quota could not be read; the call is then refused as unavailable, not as over it.
    type Error;

    /// Whether one more call under `key` is within `limit`; an allowed call is counted, a
    /// refused one is not.
    fn take(
        &self,
        key: &str,
        limit: &RateLimit,
        now: Instant,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

/// Where a capability's `max_concurrent` slots are counted.
///
/// [`ConcurrencyLimiter`] counts in this process. Replicas sharing a database count there
/// instead (`infrastructure::persistence::RunningSlots`), so a session's calls running on every
/// replica count against one limit.
pub trait Slots {
    /// Why the slots could not be counted; the call is then refused as unavailable.
    type Error;
    /// A slot held by one running call.
    type Permit: Send;

    /// A slot under `key` when fewer than `limit` calls hold one.
    fn try_acquire(
        &self,
        key: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Option<Self::Permit>, Self::Error>> + Send;

    /// Gives the slot back, and returns once another call may take it: a client whose call has
    /// answered may start the next one at once, on any replica.
    fn release(&self, permit: Self::Permit) -> impl Future<Output = ()> + Send;
}

/// What a capability's limits answer for one call.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<P> {
    /// Within its limits: the call's running slot, when the capability sets `max_concurrent`.
    Admitted(Option<P>),
    /// Its `max_concurrent` calls are running.
    SlotsFull,
    /// A slot was free but its `rate_limit` quota is spent; the call keeps no slot.
    QuotaSpent,
}

impl<P> Admission<P> {
    /// The same answer, with the admitted call's slot mapped by `f`.
    pub fn map<T>(self, f: impl FnOnce(P) -> T) -> Admission<T> {
        match self {
            Self::Admitted(slot) => Admission::Admitted(slot.map(f)),
            Self::SlotsFull => Admission::SlotsFull,
            Self::QuotaSpent => Admission::QuotaSpent,
        }
    }
}

/// Where a capability's `max_concurrent` slots and `rate_limit` quota are taken, together.
///
/// [`InTurn`] asks a [`Slots`] and then a [`Quota`]. Replicas sharing a database take both in
/// one statement when a capability sets both (`infrastructure::persistence::CallLimits`), which
/// saves the call a round trip; the answers are the same.
pub trait Limits {
    /// Why the limits could not be counted; the call is then refused as unavailable.
    type Error;
    /// A slot held by one running call.
    type Permit: Send;

    /// Takes a slot under `key` when fewer than `max_concurrent` calls hold one, then a call of
    /// `rate_limit`'s quota; a limit that is `None` is not counted. The slot is looked at first
    /// because a slot can be given back while spent quota cannot, so a call refused by either
    /// limit has taken nothing: its slot is given back before this returns.
    fn admit(
        &self,
        key: &str,
        max_concurrent: Option<u32>,
        rate_limit: Option<&RateLimit>,
        now: Instant,
    ) -> impl Future<Output = Result<Admission<Self::Permit>, Self::Error>> + Send;
}

/// A [`Slots`] and a [`Quota`] asked in turn: the slot, then, when there is one, the quota.
#[derive(Debug)]
pub struct InTurn<'a, S, Q> {
    pub running: &'a S,
    pub quota: &'a Q,
}

impl<S, Q> Limits for InTurn<'_, S, Q>
where
    S: Slots<Error = Q::Error> + Sync,
    Q: Quota + Sync,
    Q::Error: Send,
{
    type Error = Q::Error;
    type Permit = S::Permit;

    async fn admit(
        &self,
        key: &str,
        max_concurrent: Option<u32>,
        rate_limit: Option<&RateLimit>,
        now: Instant,
    ) -> Result<Admission<S::Permit>, Q::Error> {
        let permit = match max_concurrent {
            None => None,
            Some(limit) => match self.running.try_acquire(key, limit).await? {
                Some(permit) => Some(permit),
                None => return Ok(Admission::SlotsFull),
            },
        };
        if let Some(limit) = rate_limit {
            let taken = self.quota.take(key, limit, now).await;
            if !matches!(taken, Ok(true)) {
                if let Some(permit) = permit {
                    self.running.release(permit).await;
                }
                taken?;
                return Ok(Admission::QuotaSpent);
            }
        }
        Ok(Admission::Admitted(permit))
    }
}

impl Quota for RateLimiter {
    type Error = Infallible;

    async fn take(&self, key: &str, limit: &RateLimit, now: Instant) -> Result<bool, Infallible> {
        Ok(self.check(key, limit, now))
    }
}

/// Rate limiting per key in this process, with bounded memory; `now` is passed in, so tests are
/// deterministic, and the lock is held only for one check, never across an await.
///
/// A sliding log rather than GCRA: GCRA with a burst of `calls` lets almost `2 * calls` through
/// in one window, while the message promises "`calls` calls per `per_seconds` s". The log
/// guarantees at most `calls` calls in any `per_seconds` window. Limits of up to 64 calls are
/// exact; larger limits merge calls into 64 slots per window, which may refuse a call up to
/// `per_seconds / 64` early but never lets one too many through, and caps a key at about 66
/// slots however large `calls` is. Idle keys are swept every `max(n, 64)` checks, `n` being the
/// keys the previous sweep kept, so sweeping is amortised O(1) per check and the map holds at
/// most about twice the active keys plus 64.
#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<LimiterState>,
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// true when allowed (and the call is counted)
    ///
    /// A refused call is not counted, so a client that keeps retrying regains quota as its
    /// earlier calls age out. A limit with `calls == 0` or `per_seconds == 0` refuses everything:
    /// `aegis_seal_crds::compile` rejects such limits, so this only guards hand-built snapshots.
    pub fn check(&self, key: &str, limit: &RateLimit, now: Instant) -> bool {
        if limit.calls == 0 || limit.per_seconds == 0 {
            return false;
        }
        let window = Duration::from_secs(u64::from(limit.per_seconds));
        // A panic elsewhere while holding the lock cannot leave a log half-updated in a way
        // that matters (worst case one call is miscounted), so a poisoned lock is still used.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.checks_since_sweep += 1;
        if state.checks_since_sweep >= state.len_after_sweep.max(MIN_SWEEP_INTERVAL) {
            state.sweep(now);
        }
        let Some(log) = state.keys.get_mut(key) else {
            let mut slots = VecDeque::with_capacity(1);
            slots.push_back(Slot {
                first: now,
                last: now,
                count: 1,
            });
            state.keys.insert(
                key.to_owned(),
                KeyLog {
                    slots,
                    total: 1,
                    window,
                },
            );
            return true;
        };
        // The limit can change between snapshots; the latest one applies to the whole log.
        log.window = window;
        log.drop_expired(now);
        if log.total >= u64::from(limit.calls) {
            return false;
        }
        let slot_width = if limit.calls <= EXACT_LOG_CALLS {
            Duration::ZERO
        } else {
            window / LOG_SLOTS
        };
        match log.slots.back_mut() {
            Some(slot) if now.saturating_duration_since(slot.first) < slot_width => {
                slot.last = slot.last.max(now);
                slot.count += 1;
            }
            _ => log.slots.push_back(Slot {
                first: now,
                last: now,
                count: 1,
            }),
        }
        log.total += 1;
        true
    }

    /// How many keys are tracked (idle ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Calls running at once per key, for `max_concurrent`.
///
/// A key exists only while one of its calls runs, so memory follows the calls in flight and no
/// sweeping is needed. Cloning shares the counts.
#[derive(Debug, Default, Clone)]
pub struct ConcurrencyLimiter {
    running: Arc<Mutex<HashMap<String, u32>>>,
}

impl ConcurrencyLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A permit when fewer than `limit` calls of `key` are running; the call counts as running
    /// until the permit is dropped, which happens however the call ends (answered, failed, or
    /// dropped with its connection).
    pub fn try_acquire(&self, key: String, limit: u32) -> Option<RunningPermit> {
        // `compile` refuses 0; a hand-built snapshot's 0 refuses everything, as for rate limits.
        if limit == 0 {
            return None;
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get_mut(&key) {
            Some(count) if *count >= limit => return None,
            Some(count) => *count += 1,
            None => {
                running.insert(key.clone(), 1);
            }
        }
        drop(running);
        Some(RunningPermit {
            limiter: self.clone(),
            key,
        })
    }

    /// How many calls hold a slot, over every key.
    pub fn calls(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|&count| count as usize)
            .sum()
    }

    /// How many keys have calls running.
    pub fn len(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One running call of a `max_concurrent` capability; dropping it frees the slot.
#[derive(Debug)]
pub struct RunningPermit {
    limiter: ConcurrencyLimiter,
    key: String,
}

impl Drop for RunningPermit {
    fn drop(&mut self) {
        let mut running = self
            .limiter
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

/// Two permits are equal when they hold a slot of the same key (for comparing grants in tests).
impl PartialEq for RunningPermit {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for RunningPermit {}

impl Slots for ConcurrencyLimiter {
    type Error = Infallible;
    type Permit = RunningPermit;

    async fn try_acquire(
        &self,
        key: &str,
        limit: u32,
    ) -> Result<Option<RunningPermit>, Infallible> {
        Ok(ConcurrencyLimiter::try_acquire(self, key.to_owned(), limit))
    }

    async fn release(&self, permit: RunningPermit) {
        drop(permit);
    }
}

/// Evaluates a call. Order: (1) any deny_list pattern matching → ToolDenied. (2) Capabilities
/// whose tool_pattern matches, in order: the call is allowed if ANY of them passes all its
/// constraints (RFC; upstream stopped at the first). Rate limits and running calls are counted
/// only on the capability that allows the call (so a call refused by constraints does not burn
/// quota); their key is `format!("{scope}\u{1f}{context_name}\u{1f}{capability_index}")`. If no
/// capability matched the tool → ToolNotAllowed. If some matched but none allowed → the
/// violation of the FIRST matching capability.
///
/// In detail: the capabilities that match and pass their constraints are tried in order, and
/// the first with a free running slot (or no `max_concurrent`) and quota left (or no
/// `rate_limit`) allows the call; only that one's slot and quota are taken (see
/// [`Limits::admit`]). The slot is held by [`Grant::running`]. [`Grant::max_response_size`] is
/// the smallest over every capability that passed its constraints (whether or not its limits
/// were needed), so the bound does not depend on which limits happen to be reached. Slots and
/// quota are taken from `limits`, which may be shared with other replicas: the only awaits, and
/// only for a capability with a `rate_limit` or a `max_concurrent`.
///
/// Constraints, each applied only when the capability sets it:
/// * path (tools `fs.*`, `filesystem.*`, argument `path`): normalised lexically and required to
///   be an allowlisted directory or under one, on component boundaries; relative paths and
///   paths climbing above `/` are refused. `/dir/*` and `/dir/**` mean `/dir`.
/// * command and subcommand (tool `cmd.run`, argument `command`): the first whitespace token
///   must be allowlisted; with a subcommand list, the second token must be in it.
/// * domain (tools `web.*`, `web-search.*`, argument `url`): the URL's host, lower-cased and
///   without one trailing dot, must equal an entry or end with `.` + entry. URLs that cannot be
///   parsed strictly, or that carry userinfo, are refused: those are where URL parsers disagree.
///
/// A missing (or `null`) argument passes, as upstream; a present argument that is not a string
/// is refused when the constraint is set, because an executor that coerces it would act on a
/// value this check never saw.
pub async fn evaluate<L: Limits>(
    context: &SecurityContextEntry,
    tool: &str,
    arguments: &Value,
    scope: &str,
    limits: &L,
    now: Instant,
) -> Result<Grant<L::Permit>, Refused<L::Error>> {
    if context
        .deny_list
        .iter()
        .any(|pattern| tool_pattern_matches(pattern, tool))
    {
        return Err(Refused::Policy(Violation::ToolDenied {
            tool: tool.to_owned(),
        }));
    }

    let mut first_match: Option<usize> = None;
    let mut first_violation: Option<Violation> = None;
    let mut passing: Vec<usize> = Vec::new();
    for (index, capability) in context.capabilities.iter().enumerate() {
        if !tool_pattern_matches(&capability.tool_pattern, tool) {
            continue;
        }
        let is_first = first_match.is_none();
        first_match.get_or_insert(index);
        match check_constraints(capability, tool, arguments) {
            Ok(()) => passing.push(index),
            Err(violation) if is_first => first_violation = Some(violation),
            Err(_) => {}
        }
    }
    let Some(first_match) = first_match else {
        return Err(Refused::Policy(Violation::ToolNotAllowed {
            tool: tool.to_owned(),
        }));
    };

    let max_response_size = passing
        .iter()
        .filter_map(|&index| context.capabilities[index].max_response_size)
        .min();
    for &index in &passing {
        let capability = &context.capabilities[index];
        if capability.max_concurrent.is_none() && capability.rate_limit.is_none() {
            return Ok(Grant {
                max_response_size,
                running: None,
            });
        }
        let key = format!("{scope}\u{1f}{}\u{1f}{index}", context.name);
        let admission = limits
            .admit(
                &key,
                capability.max_concurrent,
                capability.rate_limit.as_ref(),
                now,
            )
            .await
            .map_err(Refused::LimitUnavailable)?;
        let refusal = match admission {
            Admission::Admitted(running) => {
                return Ok(Grant {
                    max_response_size,
                    running,
                });
            }
            Admission::SlotsFull => {
                capability
                    .max_concurrent
                    .map(|limit| Violation::ConcurrentExecLimitExceeded {
                        tool: tool.to_owned(),
                        limit,
                    })
            }
            Admission::QuotaSpent => {
                capability
                    .rate_limit
                    .map(|limit| Violation::RateLimitExceeded {
                        tool: tool.to_owned(),
                        calls: limit.calls,
                        per_seconds: limit.per_seconds,
                    })
            }
        };
        if index == first_match {
            first_violation = refusal;
        }
    }
    // The first matching capability either failed a constraint or passed and reached a limit,
    // so a violation is always recorded; the fallback only keeps this free of panics.
    Err(Refused::Policy(first_violation.unwrap_or_else(|| {
        Violation::ToolNotAllowed {
            tool: tool.to_owned(),
        }
    })))
}

/// The first constraint of `capability` that the call breaks, in upstream's order.
fn check_constraints(
    capability: &Capability,
    tool: &str,
    arguments: &Value,
) -> Result<(), Violation> {
    if let Some(allowlist) = &capability.path_allowlist
        && (tool.starts_with("fs.") || tool.starts_with("filesystem."))
    {
        check_path(allowlist, arguments.get("path"))?;
    }
    if tool == "cmd.run"
        && (capability.command_allowlist.is_some() || capability.subcommand_allowlist.is_some())
    {
        check_command(capability, arguments.get("command"))?;
    }
    if let Some(allowlist) = &capability.domain_allowlist
        && (tool.starts_with("web.") || tool.starts_with("web-search."))
    {
        check_domain(allowlist, arguments.get("url"))?;
    }
    Ok(())
}

/// The argument as a string, `None` when absent or `null`, or `Err` with its JSON text when it
/// is something else (for the violation message).
fn string_arg(value: Option<&Value>) -> Result<Option<&str>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(other.to_string()),
    }
}

fn check_path(allowlist: &[String], path: Option<&Value>) -> Result<(), Violation> {
    let path = match string_arg(path) {
        Ok(None) => return Ok(()),
        Ok(Some(path)) => path,
        Err(rendered) => return Err(Violation::PathOutsideBoundary { path: rendered }),
    };
    let inside = normalize_path(path).is_some_and(|requested| {
        allowlist.iter().any(|entry| {
            // Drop the glob but keep its slash, so `/*` still means `/`.
            let entry = entry
                .strip_suffix("/**")
                .or_else(|| entry.strip_suffix("/*"))
                .map_or(entry.as_str(), |dir| &entry[..=dir.len()]);
            normalize_path(entry).is_some_and(|dir| requested.starts_with(&dir))
        })
    });
    if inside {
        Ok(())
    } else {
        Err(Violation::PathOutsideBoundary {
            path: path.to_owned(),
        })
    }
}

/// The components of an absolute path after resolving `.`, `..` and repeated `/` lexically;
/// `None` for relative paths, paths climbing above `/`, and paths with NUL (never a real path,
/// and C APIs downstream would truncate at it). `/` is the empty list, so it is under nothing
/// but itself. Symlinks are not resolved: that needs the filesystem, so it is the executor's job.
fn normalize_path(path: &str) -> Option<Vec<&str>> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop()?;
            }
            name => components.push(name),
        }
    }
    Some(components)
}

fn check_command(capability: &Capability, command: Option<&Value>) -> Result<(), Violation> {
    let command = match string_arg(command) {
        Ok(None) => return Ok(()),
        Ok(Some(command)) => command,
        Err(rendered) => return Err(Violation::CommandNotAllowed { command: rendered }),
    };
    let mut tokens = command.split_whitespace();
    let base = tokens.next().unwrap_or("");
    let refuse_base = || Violation::CommandNotAllowed {
        command: base.to_owned(),
    };
    if let Some(allowlist) = &capability.command_allowlist
        && !allowlist.iter().any(|allowed| allowed == base)
    {
        return Err(refuse_base());
    }
    if let Some(subcommands) = &capability.subcommand_allowlist {
        let Some(allowed) = subcommands.get(base) else {
            return Err(refuse_base());
        };
        if !allowed.is_empty() {
            let sub = tokens.next().unwrap_or("");
            if !allowed.iter().any(|a| a == sub) {
                return Err(Violation::SubcommandNotAllowed {
                    base: base.to_owned(),
                    sub: sub.to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn check_domain(allowlist: &[String], url: Option<&Value>) -> Result<(), Violation> {
    let url = match string_arg(url) {
        Ok(None) => return Ok(()),
        Ok(Some(url)) => url,
        Err(rendered) => return Err(Violation::DomainNotAllowed { domain: rendered }),
    };
    let host = match url_host(url) {
        Ok(host) => host,
        Err(UrlProblem::Userinfo { host }) => {
            return Err(Violation::DomainNotAllowed { domain: host });
        }
        Err(UrlProblem::Unparseable) => {
            // Echo the URL so the caller can see what was refused, unless it may hold
            // credentials (anything with `@`), which must not reach logs or audit records.
            let domain = if url.contains('@') { "" } else { url };
            return Err(Violation::DomainNotAllowed {
                domain: domain.to_owned(),
            });
        }
    };
    let allowed = match &host {
        Host::Ip(ip) => allowlist.iter().any(|entry| {
            let entry = entry.trim_start_matches('[').trim_end_matches(']');
            entry.parse::<IpAddr>().is_ok_and(|e| e == *ip)
        }),
        Host::Name(name) => allowlist.iter().any(|entry| {
            let entry = entry.to_ascii_lowercase();
            let entry = entry.strip_suffix('.').unwrap_or(&entry);
            !entry.is_empty()
                && name
                    .strip_suffix(entry)
                    .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
        }),
    };
    if allowed {
        Ok(())
    } else {
        Err(Violation::DomainNotAllowed {
            domain: host.to_string(),
        })
    }
}

/// A URL's host: an IP address (matched exactly) or a lower-case DNS name.
#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(ip) => write!(f, "{ip}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum UrlProblem {
    Unparseable,
    /// The host after the last `@` (what WHATWG parsers use), or "" when that is not a host.
    Userinfo {
        host: String,
    },
}

/// Extracts the host of `scheme://[userinfo@]host[:port][/?#...]` strictly, without a URL crate.
///
/// Strict on purpose: whatever this accepts must mean the same host to the HTTP client that
/// later fetches it. So anything a WHATWG parser would rewrite (percent-escapes, backslashes,
/// non-ASCII, numeric hosts such as `0x7f.1`) is refused rather than interpreted, and IPv4
/// hosts must be plain dotted quads.
fn url_host(url: &str) -> Result<Host, UrlProblem> {
    let (scheme, rest) = url.split_once("://").ok_or(UrlProblem::Unparseable)?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(UrlProblem::Unparseable);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if let Some((_, host_port)) = authority.rsplit_once('@') {
        let host = host_and_port(host_port)
            .map(|host| host.to_string())
            .unwrap_or_default();
        return Err(UrlProblem::Userinfo { host });
    }
    host_and_port(authority).ok_or(UrlProblem::Unparseable)
}

fn host_and_port(authority: &str) -> Option<Host> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(inside.parse::<Ipv6Addr>().ok()?)), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        (dns_or_ipv4(host)?, port)
    };
    if let Some(port) = port
        && !port.is_empty()
        && !(port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
    {
        return None;
    }
    Some(host)
}

fn dns_or_ipv4(host: &str) -> Option<Host> {
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    let labels_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return None;
    }
    // WHATWG reads a host whose last label is a number as IPv4 (`1.2.3`, `0x7f.1`, `010.0.0.1`);
    // only the canonical dotted quad means the same to every parser.
    let last = host.rsplit('.').next().unwrap_or(host);
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit());
    if numeric {
        let ip = host.parse::<Ipv4Addr>().ok()?;
        return (ip.to_string() == host).then_some(Host::Ip(IpAddr::V4(ip)));
    }
    Some(Host::Name(host.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_seal_crds::ResourceRef;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// [`evaluate`] with the in-process limiter, which answers at once: its future is ready on
    /// its first poll.
    fn evaluate_locally(
        context: &SecurityContextEntry,
        tool: &str,
        arguments: &Value,
        scope: &str,
        limiter: &RateLimiter,
        running: &ConcurrencyLimiter,
        now: Instant,
    ) -> Result<Grant, Violation> {
        let limits = InTurn {
            running,
            quota: limiter,
        };
        let evaluation = evaluate(context, tool, arguments, scope, &limits, now);
        match futures::FutureExt::now_or_never(evaluation)
            .expect("the in-process limiter never waits")
        {
            Ok(grant) => Ok(grant),
            Err(Refused::Policy(violation)) => Err(violation),
            Err(Refused::LimitUnavailable(never)) => match never {},
        }
    }

    fn cap(pattern: &str) -> Capability {
        Capability::unconstrained(pattern)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn with_paths(pattern: &str, paths: &[&str]) -> Capability {
        Capability {
            path_allowlist: Some(strings(paths)),
            ..cap(pattern)
        }
    }

    fn with_domains(pattern: &str, domains: &[&str]) -> Capability {
        Capability {
            domain_allowlist: Some(strings(domains)),
            ..cap(pattern)
        }
    }

    fn with_commands(commands: &[&str]) -> Capability {
        Capability {
            command_allowlist: Some(strings(commands)),
            ..cap("cmd.run")
        }
    }

    fn with_subcommands(map: &[(&str, &[&str])]) -> Capability {
        Capability {
            subcommand_allowlist: Some(
                map.iter()
                    .map(|(base, subs)| ((*base).to_owned(), strings(subs)))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..cap("cmd.run")
        }
    }

    fn limited(pattern: &str, calls: u32, per_seconds: u32) -> Capability {
        Capability {
            rate_limit: Some(RateLimit { calls, per_seconds }),
            ..cap(pattern)
        }
    }

    fn sized(pattern: &str, max: Option<u64>) -> Capability {
        Capability {
            max_response_size: max,
            ..cap(pattern)
        }
    }

    fn ctx(capabilities: Vec<Capability>, deny: &[&str]) -> SecurityContextEntry {
        SecurityContextEntry {
            source: ResourceRef {
                kind: "SecurityContext".to_owned(),
                namespace: Some("default".to_owned()),
                name: "test".to_owned(),
                generation: Some(1),
            },
            name: "test".to_owned(),
            tenant_id: None,
            description: String::new(),
            capabilities,
            deny_list: strings(deny),
        }
    }

    /// Evaluates with a fresh limiter and a fixed clock, for tests that are not about limits.
    fn eval(context: &SecurityContextEntry, tool: &str, args: Value) -> Result<Grant, Violation> {
        evaluate_locally(
            context,
            tool,
            &args,
            "scope",
            &RateLimiter::new(),
            &ConcurrencyLimiter::new(),
            Instant::now(),
        )
    }

    fn path_result(allow: &[&str], path: &str) -> Result<Grant, Violation> {
        eval(
            &ctx(vec![with_paths("fs.*", allow)], &[]),
            "fs.read",
            json!({ "path": path }),
        )
    }

    fn url_result(allow: &[&str], url: &str) -> Result<Grant, Violation> {
        eval(
            &ctx(vec![with_domains("web.*", allow)], &[]),
            "web.fetch",
            json!({ "url": url }),
        )
    }

    fn domain_refused(domain: &str) -> Result<Grant, Violation> {
        Err(Violation::DomainNotAllowed {
            domain: domain.to_owned(),
        })
    }

    // ---- Violation codes, messages and labels -------------------------------------------

    #[test]
    fn every_violation_has_its_code_message_and_label() {
        let cases = [
            (
                Violation::ToolDenied { tool: "t".into() },
                2001,
                "tool denied: t",
                "tool_denied",
            ),
            (
                Violation::ToolNotAllowed { tool: "t".into() },
                2000,
                "tool not allowed: t",
                "tool_not_allowed",
            ),
            (
                Violation::PathOutsideBoundary {
                    path: "/etc/passwd".into(),
                },
                2002,
                "path outside boundary: /etc/passwd",
                "path_outside_boundary",
            ),
            (
                Violation::CommandNotAllowed {
                    command: "rm".into(),
                },
                2003,
                "command not allowed: rm",
                "command_not_allowed",
            ),
            (
                Violation::SubcommandNotAllowed {
                    base: "git".into(),
                    sub: "push".into(),
                },
                2003,
                "subcommand not allowed: git push",
                "subcommand_not_allowed",
            ),
            (
                Violation::SubcommandNotAllowed {
                    base: "git".into(),
                    sub: String::new(),
                },
                2003,
                "subcommand not allowed: git ",
                "subcommand_not_allowed",
            ),
            (
                Violation::DomainNotAllowed {
                    domain: "evil.com".into(),
                },
                2004,
                "domain not allowed: evil.com",
                "domain_not_allowed",
            ),
            (
                Violation::RateLimitExceeded {
                    tool: "github.search".into(),
                    calls: 10,
                    per_seconds: 60,
                },
                2005,
                "rate limit exceeded: github.search (10 calls per 60 s)",
                "rate_limit_exceeded",
            ),
            (
                Violation::ConcurrentExecLimitExceeded {
                    tool: "busybox".into(),
                    limit: 2,
                },
                2005,
                "concurrent execution limit exceeded: busybox (2 running)",
                "concurrent_exec_limit_exceeded",
            ),
        ];
        for (violation, code, message, label) in cases {
            assert_eq!(violation.code(), code, "{violation:?}");
            assert_eq!(violation.message(), message, "{violation:?}");
            assert_eq!(violation.metric_label(), label, "{violation:?}");
        }
    }

    #[test]
    fn evaluate_produces_each_violation() {
        let context = ctx(
            vec![
                with_paths("fs.*", &["/workspace"]),
                with_commands(&["git"]),
                with_domains("web.*", &["github.com"]),
                limited("limited", 1, 60),
            ],
            &["danger"],
        );
        let limiter = RateLimiter::new();
        let now = Instant::now();
        let run = |tool: &str, args: Value| {
            evaluate_locally(
                &context,
                tool,
                &args,
                "s",
                &limiter,
                &ConcurrencyLimiter::new(),
                now,
            )
        };
        assert_eq!(
            run("danger", json!({})).map_err(|v| (v.code(), v.message())),
            Err((2001, "tool denied: danger".to_owned()))
        );
        assert_eq!(
            run("other", json!({})).map_err(|v| (v.code(), v.message())),
            Err((2000, "tool not allowed: other".to_owned()))
        );
        assert_eq!(
            run("fs.read", json!({"path": "/etc/passwd"})).map_err(|v| (v.code(), v.message())),
            Err((2002, "path outside boundary: /etc/passwd".to_owned()))
        );
        assert_eq!(
            run("cmd.run", json!({"command": "rm -rf /"})).map_err(|v| (v.code(), v.message())),
            Err((2003, "command not allowed: rm".to_owned()))
        );
        assert_eq!(
            run("web.fetch", json!({"url": "https://evil.com/"}))
                .map_err(|v| (v.code(), v.message())),
            Err((2004, "domain not allowed: evil.com".to_owned()))
        );
        assert_eq!(run("limited", json!({})), Ok(Grant::default()));
        assert_eq!(
            run("limited", json!({})).map_err(|v| (v.code(), v.message())),
            Err((
                2005,
                "rate limit exceeded: limited (1 calls per 60 s)".to_owned()
            ))
        );
    }

    // ---- Tool patterns ------------------------------------------------------------------

    #[test]
    fn tool_patterns_match_on_the_dot_boundary() {
        assert!(tool_pattern_matches("*", "anything"));
        assert!(tool_pattern_matches("*", ""));
        assert!(tool_pattern_matches("fs.*", "fs.read"));
        assert!(tool_pattern_matches("fs.*", "fs.dir.list"));
        assert!(!tool_pattern_matches("fs.*", "fsx"));
        assert!(!tool_pattern_matches("fs.*", "fsx.read"));
        assert!(!tool_pattern_matches("fs.*", "fs"));
        assert!(!tool_pattern_matches("fs.*", "fs."));
        assert!(!tool_pattern_matches("fs.*", "xfs.read"));
        assert!(tool_pattern_matches("a.b.*", "a.b.c"));
        assert!(!tool_pattern_matches("a.b.*", "a.bc"));
        assert!(tool_pattern_matches("github.get_repo", "github.get_repo"));
        assert!(!tool_pattern_matches("github.get_repo", "github.get_repos"));
        assert!(!tool_pattern_matches("github.get_repo", "GitHub.get_repo"));
        // Only `*` and a trailing `.*` are wildcards.
        assert!(!tool_pattern_matches("git*", "github"));
        assert!(tool_pattern_matches("git*", "git*"));
    }

    #[test]
    fn deny_list_uses_the_dot_boundary_too() {
        let context = ctx(vec![cap("*")], &["fs.*"]);
        assert_eq!(
            eval(&context, "fs.write", json!({})),
            Err(Violation::ToolDenied {
                tool: "fs.write".into()
            })
        );
        assert_eq!(eval(&context, "fsx", json!({})), Ok(Grant::default()));
        assert_eq!(eval(&context, "fs", json!({})), Ok(Grant::default()));
    }

    // ---- Session patterns ---------------------------------------------------------------

    #[test]
    fn session_patterns_follow_upstream_first_star_split() {
        let p = |items: &[&str]| strings(items);
        assert!(session_allows(&p(&["*"]), "anything"));
        assert!(session_allows(&p(&["*"]), ""));
        assert!(session_allows(&p(&["github.*"]), "github.search"));
        assert!(session_allows(&p(&["github.*"]), "github."));
        assert!(!session_allows(&p(&["github.*"]), "gitlab.search"));
        assert!(session_allows(&p(&["*_read"]), "file_read"));
        assert!(session_allows(&p(&["*_read"]), "_read"));
        assert!(!session_allows(&p(&["*_read"]), "file_write"));
        // Split at the first `*`: the suffix `b*c` is literal.
        assert!(session_allows(&p(&["a*b*c"]), "axb*c"));
        assert!(session_allows(&p(&["a*b*c"]), "ab*c"));
        assert!(!session_allows(&p(&["a*b*c"]), "axbyc"));
        // Prefix and suffix may not overlap.
        assert!(!session_allows(&p(&["ab*ba"]), "aba"));
        assert!(session_allows(&p(&["ab*ba"]), "abba"));
        assert!(session_allows(&p(&["exact.tool"]), "exact.tool"));
        assert!(!session_allows(&p(&["exact.tool"]), "exact.tool2"));
        assert!(!session_allows(&[], "anything"));
        assert!(session_allows(&p(&["nope", "github.*"]), "github.x"));
    }

    // ---- Evaluation order ---------------------------------------------------------------

    #[test]
    fn deny_list_wins_over_capabilities() {
        let context = ctx(
            vec![cap("*"), cap("github.delete_repo")],
            &["github.delete_repo"],
        );
        assert_eq!(
            eval(&context, "github.delete_repo", json!({})),
            Err(Violation::ToolDenied {
                tool: "github.delete_repo".into()
            })
        );
        assert_eq!(
            eval(&context, "github.get", json!({})),
            Ok(Grant::default())
        );
    }

    #[test]
    fn no_capability_means_tool_not_allowed() {
        assert_eq!(
            eval(&ctx(vec![], &[]), "x", json!({})),
            Err(Violation::ToolNotAllowed { tool: "x".into() })
        );
        assert_eq!(
            eval(&ctx(vec![cap("github.*")], &[]), "gitlab.x", json!({})),
            Err(Violation::ToolNotAllowed {
                tool: "gitlab.x".into()
            })
        );
    }

    #[test]
    fn any_matching_capability_may_allow() {
        // Upstream stopped at the first capability; here the second one allows /data.
        let context = ctx(
            vec![
                with_paths("fs.*", &["/workspace"]),
                with_paths("fs.read", &["/data"]),
            ],
            &[],
        );
        assert_eq!(
            eval(&context, "fs.read", json!({"path": "/data/x"})),
            Ok(Grant::default())
        );
        assert_eq!(
            eval(&context, "fs.read", json!({"path": "/workspace/x"})),
            Ok(Grant::default())
        );
        // fs.write only matches the first capability.
        assert_eq!(
            eval(&context, "fs.write", json!({"path": "/data/x"})),
            Err(Violation::PathOutsideBoundary {
                path: "/data/x".into()
            })
        );
    }

    #[test]
    fn refusal_reports_the_first_matching_capability() {
        let context = ctx(
            vec![
                cap("github.*"),
                with_paths("fs.*", &["/workspace"]),
                with_paths("fs.read", &["/data"]),
            ],
            &[],
        );
        // Both fs capabilities refuse; the violation is the first one's (same kind, and the
        // path as sent).
        assert_eq!(
            eval(&context, "fs.read", json!({"path": "/etc/../etc/passwd"})),
            Err(Violation::PathOutsideBoundary {
                path: "/etc/../etc/passwd".into()
            })
        );
        let context = ctx(
            vec![
                with_commands(&["git"]),
                with_subcommands(&[("kubectl", &["get"])]),
            ],
            &[],
        );
        assert_eq!(
            eval(
                &context,
                "cmd.run",
                json!({"command": "kubectl delete pod"})
            ),
            Err(Violation::CommandNotAllowed {
                command: "kubectl".into()
            })
        );
        assert_eq!(
            eval(&context, "cmd.run", json!({"command": "kubectl get pods"})),
            Ok(Grant::default())
        );
    }

    // ---- Paths --------------------------------------------------------------------------

    #[test]
    fn paths_are_normalised_and_checked_on_component_boundaries() {
        let ws = &["/workspace"];
        for ok in [
            "/workspace",
            "/workspace/",
            "/workspace/a",
            "/workspace/a/b.txt",
            "//workspace//a",
            "/workspace/./a",
            "/workspace/a/../b",
            "/other/../workspace/a",
            "/workspace/..a",
        ] {
            assert_eq!(path_result(ws, ok), Ok(Grant::default()), "{ok}");
        }
        for refused in [
            "/workspace/../etc/passwd",
            "/workspace/a/../../etc",
            "/workspacex",
            "/workspacex/a",
            "/work",
            "/",
            "relative",
            "workspace/a",
            "./workspace",
            "",
            "/..",
            "/../workspace",
            "/workspace/\0/x",
        ] {
            assert_eq!(
                path_result(ws, refused),
                Err(Violation::PathOutsideBoundary {
                    path: refused.into()
                }),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn path_allowlist_entries_are_normalised_and_globs_mean_the_directory() {
        for entry in [
            "/workspace/*",
            "/workspace/**",
            "/workspace/",
            "//workspace/./",
        ] {
            assert_eq!(
                path_result(&[entry], "/workspace/a"),
                Ok(Grant::default()),
                "{entry}"
            );
            assert_eq!(path_result(&[entry], "/workspace"), Ok(Grant::default()));
            assert!(path_result(&[entry], "/workspacex").is_err(), "{entry}");
        }
        assert_eq!(path_result(&["/"], "/etc/passwd"), Ok(Grant::default()));
        assert_eq!(path_result(&["/*"], "/"), Ok(Grant::default()));
        // Entries that are not absolute, or climb above `/`, allow nothing.
        assert!(path_result(&["workspace"], "/workspace").is_err());
        assert!(path_result(&["/.."], "/etc").is_err());
        assert!(path_result(&[], "/workspace").is_err());
        assert_eq!(
            path_result(&["/tmp", "/workspace"], "/workspace/a"),
            Ok(Grant::default())
        );
    }

    #[test]
    fn path_constraint_scope() {
        let context = ctx(vec![with_paths("*", &["/workspace"])], &[]);
        // A missing or null path passes, as upstream.
        assert_eq!(eval(&context, "fs.read", json!({})), Ok(Grant::default()));
        assert_eq!(
            eval(&context, "fs.read", json!({"path": null})),
            Ok(Grant::default())
        );
        assert_eq!(eval(&context, "fs.read", json!(null)), Ok(Grant::default()));
        // A non-string path is refused: the executor might coerce it.
        assert_eq!(
            eval(&context, "fs.read", json!({"path": ["/etc"]})),
            Err(Violation::PathOutsideBoundary {
                path: "[\"/etc\"]".into()
            })
        );
        // `filesystem.` tools are checked too; other tools are not.
        assert!(eval(&context, "filesystem.read", json!({"path": "/etc"})).is_err());
        assert_eq!(
            eval(&context, "other.read", json!({"path": "/etc"})),
            Ok(Grant::default())
        );
        assert_eq!(
            eval(&context, "fsx.read", json!({"path": "/etc"})),
            Ok(Grant::default())
        );
    }

    // ---- Commands -----------------------------------------------------------------------

    #[test]
    fn command_allowlist_checks_the_first_token() {
        let context = ctx(vec![with_commands(&["git", "ls"])], &[]);
        let run = |command: Value| eval(&context, "cmd.run", json!({ "command": command }));
        assert_eq!(run(json!("git status")), Ok(Grant::default()));
        assert_eq!(run(json!("  ls\t-la ")), Ok(Grant::default()));
        assert_eq!(
            run(json!("rm -rf /")),
            Err(Violation::CommandNotAllowed {
                command: "rm".into()
            })
        );
        assert_eq!(
            run(json!("gitx status")),
            Err(Violation::CommandNotAllowed {
                command: "gitx".into()
            })
        );
        assert_eq!(
            run(json!("")),
            Err(Violation::CommandNotAllowed {
                command: String::new()
            })
        );
        assert_eq!(
            run(json!(42)),
            Err(Violation::CommandNotAllowed {
                command: "42".into()
            })
        );
        assert_eq!(eval(&context, "cmd.run", json!({})), Ok(Grant::default()));
        // Only `cmd.run` is checked.
        let context = ctx(
            vec![Capability {
                command_allowlist: Some(strings(&["git"])),
                ..cap("*")
            }],
            &[],
        );
        assert_eq!(
            eval(&context, "cmd.exec", json!({"command": "rm"})),
            Ok(Grant::default())
        );
    }

    #[test]
    fn subcommand_allowlist_checks_base_and_second_token() {
        let context = ctx(
            vec![with_subcommands(&[
                ("git", &["status", "log"]),
                ("ls", &[]),
            ])],
            &[],
        );
        let run = |command: &str| eval(&context, "cmd.run", json!({ "command": command }));
        assert_eq!(run("git status"), Ok(Grant::default()));
        assert_eq!(run("git log --oneline"), Ok(Grant::default()));
        assert_eq!(run("ls /anything"), Ok(Grant::default()));
        assert_eq!(run("ls"), Ok(Grant::default()));
        assert_eq!(
            run("git push"),
            Err(Violation::SubcommandNotAllowed {
                base: "git".into(),
                sub: "push".into()
            })
        );
        assert_eq!(
            run("git"),
            Err(Violation::SubcommandNotAllowed {
                base: "git".into(),
                sub: String::new()
            })
        );
        assert_eq!(
            run("kubectl get"),
            Err(Violation::CommandNotAllowed {
                command: "kubectl".into()
            })
        );
    }

    #[test]
    fn command_and_subcommand_allowlists_combine() {
        let context = ctx(
            vec![Capability {
                command_allowlist: Some(strings(&["git", "ls"])),
                ..with_subcommands(&[("git", &["status"])])
            }],
            &[],
        );
        let run = |command: &str| eval(&context, "cmd.run", json!({ "command": command }));
        assert_eq!(run("git status"), Ok(Grant::default()));
        // In the command list but not a subcommand key.
        assert_eq!(
            run("ls"),
            Err(Violation::CommandNotAllowed {
                command: "ls".into()
            })
        );
        assert_eq!(
            run("rm x"),
            Err(Violation::CommandNotAllowed {
                command: "rm".into()
            })
        );
    }

    // ---- Domains ------------------------------------------------------------------------

    #[test]
    fn domains_match_on_label_boundaries() {
        let gh = &["github.com"];
        for ok in [
            "https://github.com/",
            "https://github.com",
            "https://api.github.com/repos",
            "https://a.b.github.com/",
            "https://github.com./",
            "https://GITHUB.COM/",
            "HTTPS://Api.GitHub.Com/x",
            "https://github.com:443/x",
            "https://github.com:/x",
            "https://github.com?q=1",
            "https://github.com#frag",
            "http://github.com/a@b",
        ] {
            assert_eq!(url_result(gh, ok), Ok(Grant::default()), "{ok}");
        }
        assert_eq!(
            url_result(gh, "https://evilgithub.com/"),
            domain_refused("evilgithub.com")
        );
        assert_eq!(
            url_result(gh, "https://github.com.evil.com/"),
            domain_refused("github.com.evil.com")
        );
        assert_eq!(url_result(gh, "https://com/"), domain_refused("com"));
        // Entries are compared case-insensitively, with one trailing dot ignored.
        assert_eq!(
            url_result(&["GitHub.COM."], "https://api.github.com/"),
            Ok(Grant::default())
        );
        assert!(url_result(&[""], "https://github.com/").is_err());
        assert!(url_result(&["*.github.com"], "https://api.github.com/").is_err());
        assert!(url_result(&[], "https://github.com/").is_err());
    }

    #[test]
    fn urls_with_userinfo_or_that_parse_ambiguously_are_refused() {
        let gh = &["github.com"];
        assert_eq!(
            url_result(gh, "https://github.com@evil.com/"),
            domain_refused("evil.com")
        );
        assert_eq!(
            url_result(gh, "https://user:pw@github.com/"),
            domain_refused("github.com")
        );
        assert_eq!(
            url_result(gh, "https://@github.com/"),
            domain_refused("github.com")
        );
        assert_eq!(
            url_result(gh, "https://a@b@github.com/"),
            domain_refused("github.com")
        );
        for refused in [
            "github.com",
            "//github.com/",
            "https:/github.com",
            " https://github.com/",
            "1https://github.com/",
            "https://",
            "https:///path",
            "https://github.com../",
            "https://.github.com/",
            "https://git hub.com/",
            "https://git\thub.com/",
            "https://github%2ecom/",
            "https://evil.com\\.github.com/",
            "https://bücher.github.com/",
            "https://github.com:99999/",
            "https://github.com:8x/",
            "https://github.com:1:2/",
            "https://0x7f.1/",
            "https://1.2.3/",
            "https://010.0.0.1/",
            "https://x.1.2.3.4/",
            "https://[::1/",
            "https://[::1]x/",
            "https://[fe80::1%25eth0]/",
            "https://[github.com]/",
        ] {
            assert_eq!(
                url_result(gh, refused),
                domain_refused(refused),
                "{refused:?}"
            );
        }
        // An unparseable URL that may carry credentials is not echoed.
        assert_eq!(url_result(gh, "https://user:pw@[::1/"), domain_refused(""));
        assert_eq!(url_result(gh, "user@github.com"), domain_refused(""));
    }

    #[test]
    fn ip_hosts_match_entries_exactly() {
        assert_eq!(
            url_result(&["::1"], "http://[::1]:8080/x"),
            Ok(Grant::default())
        );
        assert_eq!(
            url_result(&["[0:0::1]"], "http://[::1]/"),
            Ok(Grant::default())
        );
        assert_eq!(
            url_result(&["github.com"], "http://[::1]/"),
            domain_refused("::1")
        );
        assert_eq!(
            url_result(&["github.com"], "http://[2001:DB8::1]/"),
            domain_refused("2001:db8::1")
        );
        assert_eq!(
            url_result(&["10.0.0.1"], "http://10.0.0.1:80/"),
            Ok(Grant::default())
        );
        // No label-suffix matching on addresses.
        assert_eq!(
            url_result(&["0.0.1"], "http://10.0.0.1/"),
            domain_refused("10.0.0.1")
        );
    }

    #[test]
    fn domain_constraint_scope() {
        let context = ctx(vec![with_domains("*", &["github.com"])], &[]);
        assert_eq!(eval(&context, "web.fetch", json!({})), Ok(Grant::default()));
        assert_eq!(
            eval(
                &context,
                "web-search.query",
                json!({"url": "https://evil.com"})
            ),
            domain_refused("evil.com")
        );
        assert_eq!(
            eval(&context, "webx.fetch", json!({"url": "https://evil.com"})),
            Ok(Grant::default())
        );
        assert_eq!(
            eval(
                &context,
                "web.fetch",
                json!({"url": {"host": "github.com"}})
            ),
            domain_refused("{\"host\":\"github.com\"}")
        );
    }

    // ---- Grants -------------------------------------------------------------------------

    #[test]
    fn grant_is_the_tightest_size_of_the_allowing_capabilities() {
        let context = ctx(
            vec![
                sized("github.*", Some(4096)),
                sized("*", None),
                sized("github.search", Some(1024)),
                // Matches but refuses, so its size does not count.
                Capability {
                    max_response_size: Some(1),
                    ..with_paths("fs.*", &["/workspace"])
                },
            ],
            &[],
        );
        assert_eq!(
            eval(&context, "github.search", json!({})),
            Ok(Grant {
                max_response_size: Some(1024),
                running: None
            })
        );
        assert_eq!(
            eval(&context, "github.get", json!({})),
            Ok(Grant {
                max_response_size: Some(4096),
                running: None
            })
        );
        assert_eq!(
            eval(&context, "other", json!({})),
            Ok(Grant {
                max_response_size: None,
                running: None
            })
        );
        assert_eq!(
            eval(&context, "fs.read", json!({"path": "/workspace/a"})),
            Ok(Grant {
                max_response_size: Some(1),
                running: None
            })
        );
        assert_eq!(
            eval(&context, "fs.read", json!({"path": "/etc"})),
            Ok(Grant {
                max_response_size: None,
                running: None
            })
        );
    }

    // ---- Rate limiting ------------------------------------------------------------------

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn limiter_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RateLimiter>();
    }

    #[test]
    fn limiter_allows_n_calls_per_sliding_window() {
        let limiter = RateLimiter::new();
        let limit = RateLimit {
            calls: 3,
            per_seconds: 10,
        };
        let t0 = Instant::now();
        assert!(limiter.check("k", &limit, t0));
        assert!(limiter.check("k", &limit, t0 + secs(1)));
        assert!(limiter.check("k", &limit, t0 + secs(2)));
        assert!(!limiter.check("k", &limit, t0 + secs(2)));
        assert!(!limiter.check("k", &limit, t0 + ms(9_999)));
        // The first call leaves the window at exactly t0 + 10 s; only one slot frees up.
        assert!(limiter.check("k", &limit, t0 + secs(10)));
        assert!(!limiter.check("k", &limit, t0 + ms(10_500)));
        assert!(limiter.check("k", &limit, t0 + secs(11)));
        // No fixed-window edge: four calls never fit in any 10 s.
        assert!(!limiter.check("k", &limit, t0 + ms(11_999)));
        assert!(limiter.check("k", &limit, t0 + secs(100)));
    }

    #[test]
    fn refused_calls_do_not_consume_quota() {
        let limiter = RateLimiter::new();
        let limit = RateLimit {
            calls: 1,
            per_seconds: 10,
        };
        let t0 = Instant::now();
        assert!(limiter.check("k", &limit, t0));
        for s in 1..10 {
            assert!(!limiter.check("k", &limit, t0 + secs(s)));
        }
        // Retries during the window did not push it back.
        assert!(limiter.check("k", &limit, t0 + secs(10)));
    }

    /// A shared store that cannot answer, counting how often each counter was asked.
    #[derive(Default)]
    struct UnreachableStore {
        quota_asks: AtomicUsize,
        slot_asks: AtomicUsize,
    }

    impl Quota for UnreachableStore {
        type Error = &'static str;

        async fn take(&self, _: &str, _: &RateLimit, _: Instant) -> Result<bool, &'static str> {
            self.quota_asks.fetch_add(1, Ordering::SeqCst);
            Err("connection refused")
        }
    }

    impl Slots for UnreachableStore {
        type Error = &'static str;
        type Permit = ();

        async fn try_acquire(&self, _: &str, _: u32) -> Result<Option<()>, &'static str> {
            self.slot_asks.fetch_add(1, Ordering::SeqCst);
            Err("connection refused")
        }

        async fn release(&self, (): ()) {}
    }

    #[tokio::test]
    async fn an_unanswered_store_refuses_as_unavailable_and_only_limited_calls_ask_it() {
        let store = UnreachableStore::default();
        let bounded = Capability {
            max_concurrent: Some(1),
            ..cap("bounded")
        };
        let context = ctx(
            vec![limited("limited", 1, 60), bounded, cap("free")],
            &["danger"],
        );
        let run = |tool: &'static str| {
            let (context, store) = (&context, &store);
            async move {
                let limits = InTurn {
                    running: store,
                    quota: store,
                };
                evaluate(context, tool, &json!({}), "s", &limits, Instant::now())
                    .await
                    .map(|_| ())
            }
        };
        let unavailable = Err(Refused::LimitUnavailable("connection refused"));
        assert_eq!(run("limited").await, unavailable);
        assert_eq!(run("bounded").await, unavailable);
        assert_eq!(run("free").await, Ok(()));
        assert_eq!(
            run("danger").await,
            Err(Refused::Policy(Violation::ToolDenied {
                tool: "danger".into()
            }))
        );
        assert_eq!(store.quota_asks.load(Ordering::SeqCst), 1);
        assert_eq!(store.slot_asks.load(Ordering::SeqCst), 1);
    }

    /// Slots counted in the process whose releases are counted too.
    #[derive(Default)]
    struct CountedReleases {
        slots: ConcurrencyLimiter,
        released: AtomicUsize,
    }

    impl Slots for CountedReleases {
        type Error = Infallible;
        type Permit = RunningPermit;

        async fn try_acquire(
            &self,
            key: &str,
            limit: u32,
        ) -> Result<Option<RunningPermit>, Infallible> {
            Ok(self.slots.try_acquire(key.to_owned(), limit))
        }

        async fn release(&self, permit: RunningPermit) {
            self.released.fetch_add(1, Ordering::SeqCst);
            drop(permit);
        }
    }

    #[tokio::test]
    async fn a_slot_taken_for_a_call_its_quota_refuses_is_released_before_the_refusal() {
        let both = Capability {
            max_concurrent: Some(1),
            ..limited("tool", 1, 60)
        };
        let context = ctx(vec![both], &[]);
        let (quota, running) = (RateLimiter::new(), CountedReleases::default());
        let limits = InTurn {
            running: &running,
            quota: &quota,
        };
        let now = Instant::now();
        let first = evaluate(&context, "tool", &json!({}), "s", &limits, now)
            .await
            .unwrap();
        assert!(first.running.is_some());
        running.release(first.running.unwrap()).await;
        let second = evaluate(&context, "tool", &json!({}), "s", &limits, now).await;
        assert!(matches!(
            second,
            Err(Refused::Policy(Violation::RateLimitExceeded { .. }))
        ));
        // Once for the first call's answer, once for the refused second call's slot.
        assert_eq!(running.released.load(Ordering::SeqCst), 2);
        assert!(running.slots.is_empty());
    }

    #[test]
    fn limiter_keys_are_independent() {
        let limiter = RateLimiter::new();
        let limit = RateLimit {
            calls: 1,
            per_seconds: 60,
        };
        let t0 = Instant::now();
        assert!(limiter.check("a", &limit, t0));
        assert!(!limiter.check("a", &limit, t0));
        assert!(limiter.check("b", &limit, t0));
        assert!(!limiter.check("b", &limit, t0));
        assert_eq!(limiter.len(), 2);
        assert!(!limiter.is_empty());
    }

    #[test]
    fn zero_limits_fail_closed() {
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        for (calls, per_seconds) in [(0, 60), (10, 0), (0, 0)] {
            assert!(!limiter.check("k", &RateLimit { calls, per_seconds }, t0));
        }
        assert!(limiter.is_empty());
    }

    #[test]
    fn idle_keys_are_evicted_so_memory_stays_bounded() {
        let limiter = RateLimiter::new();
        assert!(limiter.is_empty());
        let limit = RateLimit {
            calls: 1,
            per_seconds: 1,
        };
        let t0 = Instant::now();
        // One new key every 100 ms, each live for 1 s: about 10 are ever active at once.
        for i in 0..10_000u64 {
            assert!(limiter.check(&format!("key-{i}"), &limit, t0 + ms(100 * i)));
            assert!(
                limiter.len() <= 2 * 11 + MIN_SWEEP_INTERVAL,
                "{}",
                limiter.len()
            );
        }
        // A burst of keys, then quiet: the next sweep empties the map and gives capacity back.
        let t1 = t0 + secs(2_000);
        for i in 0..5_000 {
            assert!(limiter.check(&format!("burst-{i}"), &limit, t1));
        }
        let later = t1 + secs(2);
        for _ in 0..10_200 {
            limiter.check("only", &limit, later);
        }
        assert_eq!(limiter.len(), 1);
        let state = limiter.state.lock().unwrap();
        assert!(state.keys.capacity() <= 4 * MIN_SWEEP_INTERVAL);
    }

    #[test]
    fn large_limits_stay_bounded_and_never_exceed_the_limit() {
        let limiter = RateLimiter::new();
        let limit = RateLimit {
            calls: 10_000,
            per_seconds: 64,
        };
        let t0 = Instant::now();
        // 20 000 attempts over 128 s, one every 6.4 ms.
        let mut allowed = Vec::new();
        for i in 0..20_000u64 {
            let at = t0 + Duration::from_micros(6_400 * i);
            if limiter.check("k", &limit, at) {
                allowed.push(at);
            }
            let state = limiter.state.lock().unwrap();
            assert!(state.keys["k"].slots.len() <= LOG_SLOTS as usize + 2);
        }
        // Never more than `calls` in any window...
        for (i, start) in allowed.iter().enumerate() {
            let end = allowed.partition_point(|t| t.duration_since(*start) < secs(64));
            assert!(end - i <= 10_000);
        }
        // ...and the first window's quota is fully usable.
        assert_eq!(
            allowed
                .iter()
                .filter(|t| t.duration_since(t0) < secs(64))
                .count(),
            10_000
        );
    }

    #[test]
    fn evaluate_counts_quota_only_on_the_allowing_capability() {
        let limit = |pattern: &str, calls| limited(pattern, calls, 60);
        let context = ctx(
            vec![
                Capability {
                    rate_limit: Some(RateLimit {
                        calls: 2,
                        per_seconds: 60,
                    }),
                    ..with_paths("fs.*", &["/workspace"])
                },
                limit("fs.read", 1),
            ],
            &[],
        );
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        let run = |path: &str, at: Instant| {
            evaluate_locally(
                &context,
                "fs.read",
                &json!({ "path": path }),
                "alice",
                &limiter,
                &ConcurrencyLimiter::new(),
                at,
            )
        };
        // Refused by the first capability's path constraint, allowed by the second: only the
        // second one's quota is spent.
        assert_eq!(run("/etc/hosts", t0), Ok(Grant::default()));
        assert_eq!(
            run("/etc/hosts", t0),
            Err(Violation::PathOutsideBoundary {
                path: "/etc/hosts".into()
            })
        );
        // The first capability still has both calls.
        assert_eq!(run("/workspace/a", t0), Ok(Grant::default()));
        assert_eq!(run("/workspace/a", t0), Ok(Grant::default()));
        // Then it is exhausted and the second capability (also exhausted) cannot help; the
        // violation is the first matching capability's.
        assert_eq!(
            run("/workspace/a", t0),
            Err(Violation::RateLimitExceeded {
                tool: "fs.read".into(),
                calls: 2,
                per_seconds: 60
            })
        );
        assert_eq!(limiter.len(), 2);
        assert_eq!(run("/workspace/a", t0 + secs(60)), Ok(Grant::default()));
    }

    #[test]
    fn evaluate_falls_through_to_a_capability_with_quota() {
        let context = ctx(vec![limited("github.*", 1, 60), cap("*")], &[]);
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        let run = || {
            evaluate_locally(
                &context,
                "github.x",
                &json!({}),
                "s",
                &limiter,
                &ConcurrencyLimiter::new(),
                t0,
            )
        };
        assert_eq!(run(), Ok(Grant::default()));
        assert_eq!(run(), Ok(Grant::default()));
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn rate_limit_keys_are_per_scope_context_and_capability() {
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        let a = ctx(vec![limited("*", 1, 60), limited("*", 1, 60)], &[]);
        let b = SecurityContextEntry {
            name: "other".into(),
            ..a.clone()
        };
        let run = |context: &SecurityContextEntry, scope: &str| {
            evaluate_locally(
                context,
                "t",
                &json!({}),
                scope,
                &limiter,
                &ConcurrencyLimiter::new(),
                t0,
            )
        };
        // Two capabilities each allow one call, per scope and per context.
        for (context, scope) in [(&a, "alice"), (&a, "bob"), (&b, "alice")] {
            assert_eq!(run(context, scope), Ok(Grant::default()));
            assert_eq!(run(context, scope), Ok(Grant::default()));
            assert!(run(context, scope).is_err());
        }
        assert_eq!(limiter.len(), 6);
        let state = limiter.state.lock().unwrap();
        assert!(state.keys.contains_key("alice\u{1f}test\u{1f}0"));
        assert!(state.keys.contains_key("alice\u{1f}test\u{1f}1"));
        assert!(state.keys.contains_key("bob\u{1f}test\u{1f}1"));
        assert!(state.keys.contains_key("alice\u{1f}other\u{1f}0"));
    }

    // ---- Running calls (max_concurrent) ------------------------------------------------

    fn at_most(pattern: &str, limit: u32) -> Capability {
        Capability {
            max_concurrent: Some(limit),
            ..cap(pattern)
        }
    }

    #[test]
    fn max_concurrent_refuses_while_the_calls_run_and_frees_a_slot_when_one_ends() {
        let context = ctx(vec![at_most("busybox", 2)], &[]);
        let limiter = RateLimiter::new();
        let running = ConcurrencyLimiter::new();
        let t0 = Instant::now();
        let run = |scope: &str| {
            evaluate_locally(
                &context,
                "busybox",
                &json!({}),
                scope,
                &limiter,
                &running,
                t0,
            )
        };
        let first = run("alice").expect("first call");
        let second = run("alice").expect("second call");
        assert!(first.running.is_some() && second.running.is_some());
        let full = Violation::ConcurrentExecLimitExceeded {
            tool: "busybox".into(),
            limit: 2,
        };
        assert_eq!(run("alice"), Err(full.clone()));
        // Another session has slots of its own.
        let other = run("bob").expect("another session");
        assert_eq!(running.len(), 2);
        drop(first);
        let third = run("alice").expect("a slot was freed");
        assert_eq!(run("alice"), Err(full));
        drop((second, third, other));
        // Keys live only while their calls run.
        assert!(running.is_empty());
        assert!(
            limiter.is_empty(),
            "no rate limit was set, so nothing was counted"
        );
    }

    #[test]
    fn a_full_capability_falls_through_and_a_rate_refusal_gives_its_slot_back() {
        let limiter = RateLimiter::new();
        let running = ConcurrencyLimiter::new();
        let t0 = Instant::now();
        let fallback = ctx(vec![at_most("github.*", 1), cap("*")], &[]);
        let run = |context: &SecurityContextEntry| {
            evaluate_locally(context, "github.x", &json!({}), "s", &limiter, &running, t0)
        };
        let held = run(&fallback).expect("first call");
        assert!(held.running.is_some());
        // The first capability is full; the second allows the call without a slot.
        assert_eq!(run(&fallback), Ok(Grant::default()));
        drop(held);

        let both = ctx(
            vec![Capability {
                rate_limit: Some(RateLimit {
                    calls: 1,
                    per_seconds: 60,
                }),
                ..at_most("github.*", 1)
            }],
            &[],
        );
        drop(run(&both).expect("first call"));
        assert_eq!(
            run(&both),
            Err(Violation::RateLimitExceeded {
                tool: "github.x".into(),
                calls: 1,
                per_seconds: 60
            })
        );
        // The refused call took a slot before its quota was checked, and gave it back.
        assert!(running.is_empty());
    }

    #[test]
    fn denied_and_unmatched_calls_do_not_touch_the_limiter() {
        let context = ctx(vec![limited("github.*", 1, 60)], &["github.delete"]);
        let limiter = RateLimiter::new();
        let t0 = Instant::now();
        let run = |tool: &str| {
            evaluate_locally(
                &context,
                tool,
                &json!({}),
                "s",
                &limiter,
                &ConcurrencyLimiter::new(),
                t0,
            )
        };
        assert!(matches!(
            run("github.delete"),
            Err(Violation::ToolDenied { .. })
        ));
        assert!(matches!(
            run("gitlab.x"),
            Err(Violation::ToolNotAllowed { .. })
        ));
        assert!(limiter.is_empty());
        assert_eq!(run("github.x"), Ok(Grant::default()));
    }
}
