//! The supervisor's state machine: which workers there are, which there
//! should be (the plan: worker count, main phase, canary), and the one step
//! at a time that moves the first towards the second — restarts, rolling
//! replacements, rollbacks and promotions. Driven by [`super::run`]'s event
//! loop; nothing here waits.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use switchyard_executor::Phase;
use tokio::sync::mpsc;

use super::{
    Event, Exit, LISTENER_VARIABLE, LauncherConfig, Reload, Start, WORKER_VARIABLE, listener,
    signal,
};
use switchyard_rollout::canary::{self, CanaryConfig, Verdict, Window};
use switchyard_rollout::control::{
    FromWorker, ROLE_VARIABLE, RolledBack, SUPERVISOR_VARIABLE, ToWorker,
};

/// A worker runs the main phase or the canary phase (`SWITCHYARD_ROLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Canary,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Canary => "canary",
        }
    }
}

/// What a worker should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    role: Role,
    phase: Phase,
    /// Bumped by every accepted reload: workers of an older one are replaced.
    generation: u64,
}

/// What the workers should be.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    workers: usize,
    main_phase: Phase,
    /// The canary phase and how many workers run it.
    canary: Option<(Phase, usize)>,
    canary_config: CanaryConfig,
    ready_timeout: Duration,
    backoff: Duration,
}

impl Plan {
    fn new(launcher: &LauncherConfig, phase: Phase) -> Self {
        Self {
            workers: launcher.workers,
            main_phase: phase,
            canary: launcher
                .canary
                .phase
                .filter(|canary| *canary != phase)
                .map(|canary| (canary, launcher.canary.workers)),
            canary_config: launcher.canary.clone(),
            ready_timeout: Duration::from_millis(launcher.ready_timeout_ms),
            backoff: Duration::from_millis(launcher.restart_backoff_ms.max(1)),
        }
    }

    fn describe(&self) -> String {
        match self.canary {
            Some((canary, count)) => format!(
                "{} workers: {} in phase {}, {count} canary in phase {canary}",
                self.workers,
                self.workers - count,
                self.main_phase
            ),
            None => format!("{} workers in phase {}", self.workers, self.main_phase),
        }
    }
}

/// A worker process the supervisor started, and what it knows of it.
#[derive(Debug)]
struct Worker {
    slot: usize,
    pid: u32,
    spec: Spec,
    ready: bool,
    retiring: bool,
    control: Option<mpsc::UnboundedSender<ToWorker>>,
    window: Window,
}

/// One replacement in a rolling update: `new` (until it is ready), then the
/// `old` worker draining.
#[derive(Debug)]
struct Step {
    slot: usize,
    new: Option<u64>,
    old: Option<u64>,
    deadline: Instant,
}

/// Worker `id`, if `pid` (the peer of its control connection) is the
/// process started as that worker.
fn worker_at(workers: &mut BTreeMap<u64, Worker>, id: u64, pid: i32) -> Option<&mut Worker> {
    workers
        .get_mut(&id)
        .filter(|w| i64::from(w.pid) == i64::from(pid))
}

/// The launcher's state: one per supervisor process, owned by its event loop.
pub(super) struct Supervisor {
    service: String,
    /// The control socket's abstract name.
    socket: String,
    pub(super) events: mpsc::UnboundedSender<Event>,
    plan: Plan,
    printed: String,
    generation: u64,
    /// The rollout state told to the workers for their heartbeats.
    note: String,
    next_id: u64,
    workers: BTreeMap<u64, Worker>,
    step: Option<Step>,
    /// A replacement failed: no more until the next reload.
    stalled: bool,
    rolling: bool,
    restarting: HashSet<usize>,
    backoff: BTreeMap<usize, (Duration, Instant)>,
    /// What each slot's serving worker runs (set when it is ready): what a
    /// worker that dies while the rollout is stopped comes back with.
    last_spec: BTreeMap<usize, Spec>,
    /// When the canary was last judged (judgements are a window apart, so
    /// each looks at fresh calls); `None` until its first judgement is due.
    last_judged: Option<Instant>,
    /// Failing judgements in a row.
    failures: u32,
    /// The gRPC socket every worker serves on (`listener.rs`).
    shared: Option<listener::Shared>,
}

impl Supervisor {
    pub(super) fn new(
        start: &Start,
        socket: String,
        events: mpsc::UnboundedSender<Event>,
        shared: Option<listener::Shared>,
    ) -> Self {
        Self {
            service: start.service.clone(),
            socket,
            events,
            plan: Plan::new(&start.launcher, start.phase),
            printed: start.printed.clone(),
            generation: 0,
            note: String::new(),
            next_id: 0,
            workers: BTreeMap::new(),
            step: None,
            stalled: false,
            rolling: false,
            restarting: HashSet::new(),
            backoff: BTreeMap::new(),
            last_spec: BTreeMap::new(),
            last_judged: None,
            failures: 0,
            shared,
        }
    }

    /// Starts the workers of the initial plan.
    pub(super) fn begin(&mut self) {
        tracing::info!(
            "{} launcher: starting {}",
            self.service,
            self.plan.describe()
        );
        self.advance();
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Exited { id, status } => self.exited(id, status),
            Event::Connected { id, pid, control } => {
                let Some(worker) = worker_at(&mut self.workers, id, pid) else {
                    tracing::warn!(
                        "{} launcher: process {pid} claimed to be worker {id}; ignored",
                        self.service
                    );
                    return;
                };
                if !self.note.is_empty() {
                    let _ = control.send(ToWorker::Rollout {
                        note: self.note.clone(),
                    });
                }
                worker.control = Some(control);
            }
            Event::Message { id, pid, message } => self.message(id, pid, message),
            Event::Restart { slot } => {
                self.restarting.remove(&slot);
                self.advance();
            }
            Event::Reloaded(result) => self.reloaded(result),
        }
    }

    fn message(&mut self, id: u64, pid: i32, message: FromWorker) {
        let window = self.plan.canary_config.window();
        let warmup = self.plan.canary_config.warmup();
        let Some(worker) = worker_at(&mut self.workers, id, pid) else {
            return;
        };
        match message {
            FromWorker::Hello { .. } => {}
            FromWorker::Ready => {
                if !worker.ready {
                    worker.ready = true;
                    self.last_spec.insert(worker.slot, worker.spec);
                    tracing::info!(
                        worker = id,
                        "{} launcher: worker {id} (pid {}, {} phase {}) is ready",
                        self.service,
                        worker.pid,
                        worker.spec.role.as_str(),
                        worker.spec.phase
                    );
                }
                self.advance();
            }
            FromWorker::Report(report) => {
                worker.window.record(Instant::now(), report, window, warmup)
            }
            FromWorker::Promote => self.promote(),
            // Kept by the accept loop for `/metrics`.
            FromWorker::Stats(_) => {}
        }
    }

    /// Starts a worker for `slot`; returns its number, or `None` (logged)
    /// when the process could not be started.
    fn start(&mut self, slot: usize, spec: Spec) -> Option<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let spawned = std::env::current_exe().and_then(|exe| {
            let mut command = tokio::process::Command::new(exe);
            command
                .args(std::env::args_os().skip(1))
                .env(WORKER_VARIABLE, id.to_string())
                .env(SUPERVISOR_VARIABLE, &self.socket)
                .env(ROLE_VARIABLE, spec.role.as_str())
                .env("SWITCHYARD_EXECUTOR__PHASE", spec.phase.as_str())
                .kill_on_drop(false);
            if let Some(shared) = &self.shared {
                // The worker's standard input is the shared gRPC socket.
                command
                    .stdin(std::os::fd::OwnedFd::from(shared.listener.try_clone()?))
                    .env(LISTENER_VARIABLE, shared.address.to_string());
            }
            command.spawn()
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                tracing::error!("{} launcher: cannot start a worker: {error}", self.service);
                return None;
            }
        };
        let pid = child.id().unwrap_or(0);
        self.last_spec.entry(slot).or_insert(spec);
        tracing::info!(
            worker = id,
            pid,
            "{} launcher: worker {id} started (pid {pid}, {} phase {})",
            self.service,
            spec.role.as_str(),
            spec.phase
        );
        self.workers.insert(
            id,
            Worker {
                slot,
                pid,
                spec,
                ready: false,
                retiring: false,
                control: None,
                window: Window::default(),
            },
        );
        self.backoff
            .entry(slot)
            .and_modify(|(_, since)| *since = Instant::now())
            .or_insert((Duration::ZERO, Instant::now()));
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = Exit(child.wait().await.map_err(|error| error.to_string()));
            let _ = events.send(Event::Exited { id, status });
        });
        Some(id)
    }

    /// Starts a worker for an empty slot, or tries again after a backoff.
    fn start_or_retry(&mut self, slot: usize, spec: Spec) {
        if self.start(slot, spec).is_none() {
            self.schedule_restart(slot);
        }
    }

    fn exited(&mut self, id: u64, status: Exit) {
        let Some(worker) = self.workers.remove(&id) else {
            return;
        };
        if worker.retiring {
            tracing::info!(
                worker = id,
                "{} launcher: worker {id} (pid {}) drained and stopped: {status}",
                self.service,
                worker.pid
            );
        } else {
            let replacing = self.step.as_ref().is_some_and(|s| s.slot == worker.slot);
            tracing::warn!(
                worker = id,
                "{} launcher: worker {id} (pid {}) exited with {status}",
                self.service,
                worker.pid
            );
            if !replacing {
                self.schedule_restart(worker.slot);
            }
            // A canary that dies never gathers the calls to be judged on:
            // its exit is the verdict.
            if let Some((canary_phase, _)) = self.plan.canary
                && worker.spec.role == Role::Canary
                && Some(worker.spec) == self.desired(worker.slot)
            {
                self.roll_back(
                    canary_phase,
                    "exits",
                    format!(
                        "canary worker {id} (pid {}) exited with {status}",
                        worker.pid
                    ),
                );
                return;
            }
        }
        self.advance();
    }

    fn schedule_restart(&mut self, slot: usize) {
        let base = self.plan.backoff;
        let (last, since) = self
            .backoff
            .get(&slot)
            .copied()
            .unwrap_or((Duration::ZERO, Instant::now()));
        // A worker that lived 30 s starts over from the base delay.
        let delay = if last.is_zero() || since.elapsed() > Duration::from_secs(30) {
            base
        } else {
            (last * 2).min(Duration::from_secs(30))
        };
        self.backoff.insert(slot, (delay, since));
        tracing::warn!(
            "{} launcher: starting a worker in slot {slot} again in {delay:?}",
            self.service
        );
        self.restarting.insert(slot);
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Restart { slot });
        });
    }

    /// What slot `slot` should run, if it should exist.
    fn desired(&self, slot: usize) -> Option<Spec> {
        (slot < self.plan.workers).then(|| {
            let (role, phase) = match self.plan.canary {
                Some((phase, count)) if slot < count => (Role::Canary, phase),
                _ => (Role::Main, self.plan.main_phase),
            };
            Spec {
                role,
                phase,
                generation: self.generation,
            }
        })
    }

    /// The worker serving `slot` (not draining, not a replacement still starting).
    fn current(&self, slot: usize) -> Option<u64> {
        let incoming = self.step.as_ref().and_then(|s| s.new);
        self.workers
            .iter()
            .find(|(id, w)| w.slot == slot && !w.retiring && Some(**id) != incoming)
            .map(|(id, _)| *id)
    }

    fn retire(&mut self, id: u64) {
        if let Some(worker) = self.workers.get_mut(&id)
            && !worker.retiring
        {
            worker.retiring = true;
            tracing::info!(
                worker = id,
                "{} launcher: draining worker {id} (pid {})",
                self.service,
                worker.pid
            );
            signal(worker.pid, rustix::process::Signal::TERM);
        }
    }

    /// Moves the workers one step towards the plan.
    pub(super) fn advance(&mut self) {
        if let Some((slot, new, old, deadline)) = self
            .step
            .as_ref()
            .map(|s| (s.slot, s.new, s.old, s.deadline))
        {
            if let Some(new) = new {
                match self.workers.get(&new).map(|w| (w.ready, w.pid)) {
                    None => {
                        self.step = None;
                        self.stall(&format!(
                            "the replacement for slot {slot} exited before it was ready"
                        ));
                        return;
                    }
                    Some((true, _)) => {
                        if let Some(step) = &mut self.step {
                            step.new = None;
                        }
                    }
                    Some((false, pid)) => {
                        if Instant::now() >= deadline {
                            signal(pid, rustix::process::Signal::KILL);
                            self.step = None;
                            self.stall(&format!(
                                "worker {new} (pid {pid}) was not ready in time; killed"
                            ));
                        }
                        return;
                    }
                }
            }
            match old {
                Some(old) if self.workers.contains_key(&old) => {
                    self.retire(old);
                    return;
                }
                _ => self.step = None,
            }
        }
        if self.stalled {
            // No more replacements; a worker that died comes back as it was.
            let empty: Vec<(usize, Spec)> = self
                .last_spec
                .iter()
                .filter(|(slot, _)| {
                    !self.restarting.contains(slot) && self.current(**slot).is_none()
                })
                .map(|(slot, spec)| (*slot, *spec))
                .collect();
            for (slot, spec) in empty {
                self.start_or_retry(slot, spec);
            }
            return;
        }
        let slots = self
            .workers
            .values()
            .map(|w| w.slot + 1)
            .max()
            .unwrap_or(0)
            .max(self.plan.workers);
        for slot in 0..slots {
            match (self.desired(slot), self.current(slot)) {
                (Some(spec), Some(id)) if self.workers.get(&id).is_some_and(|w| w.spec != spec) => {
                    self.rolling = true;
                    let Some(new) = self.start(slot, spec) else {
                        self.stall(&format!("no replacement for slot {slot} could be started"));
                        return;
                    };
                    self.step = Some(Step {
                        slot,
                        new: Some(new),
                        old: Some(id),
                        deadline: Instant::now() + self.plan.ready_timeout,
                    });
                    return;
                }
                (Some(spec), None) if !self.restarting.contains(&slot) => {
                    self.start_or_retry(slot, spec);
                }
                (None, Some(id)) => {
                    self.step = Some(Step {
                        slot,
                        new: None,
                        old: Some(id),
                        deadline: Instant::now(),
                    });
                    self.retire(id);
                    return;
                }
                _ => {}
            }
        }
        // Complete when every slot's worker runs the plan and is ready.
        let done = (0..self.plan.workers).all(|slot| {
            self.current(slot)
                .and_then(|id| self.workers.get(&id))
                .is_some_and(|w| w.ready && Some(w.spec) == self.desired(slot))
        });
        if self.rolling && done {
            self.rolling = false;
            tracing::info!(
                "{} launcher: rollout complete: {}",
                self.service,
                self.plan.describe()
            );
        }
    }

    fn stall(&mut self, why: &str) {
        self.stalled = true;
        self.rolling = false;
        tracing::error!(
            "{} launcher: rollout stopped: {why}; the other workers keep their configuration until the next SIGHUP",
            self.service
        );
    }

    fn reloaded(&mut self, result: Result<Reload, String>) {
        let reload = match result {
            Ok(reload) => reload,
            Err(why) => {
                tracing::error!(
                    "{} launcher: configuration reload refused; the workers keep running the previous configuration:\n{why}",
                    self.service
                );
                return;
            }
        };
        let plan = Plan::new(&reload.launcher, reload.phase);
        if reload.printed == self.printed && plan == self.plan && !self.stalled {
            tracing::info!(
                "{} launcher: configuration unchanged; workers kept",
                self.service
            );
            return;
        }
        tracing::info!(
            "{} launcher: configuration reloaded; replacing workers one at a time: {}",
            self.service,
            plan.describe()
        );
        self.move_shared(reload.grpc_listen);
        self.printed = reload.printed;
        self.plan = plan;
        self.generation += 1;
        self.stalled = false;
        self.rolling = true;
        self.last_judged = None;
        self.failures = 0;
        self.set_note(String::new());
        self.advance();
    }

    /// A reload that names another `grpc.listen` moves the shared socket:
    /// the workers started from now on serve the new address; the old
    /// workers keep their copy of the old socket until they drain.
    fn move_shared(&mut self, address: Option<SocketAddr>) {
        let Some(address) = address else {
            return;
        };
        let serving = self.shared.as_ref().map(|shared| shared.address);
        if serving.is_some_and(|serving| listener::serves(serving, address)) {
            return;
        }
        self.shared = match listener::Shared::bind(address) {
            Ok(bound) => Some(bound),
            Err(error) => {
                tracing::warn!(
                    "{} launcher: cannot listen for gRPC on {address}: {error}; the new workers bind it themselves",
                    self.service
                );
                None
            }
        };
    }

    fn set_note(&mut self, note: String) {
        self.note = note;
        for worker in self.workers.values() {
            if let Some(control) = &worker.control {
                let _ = control.send(ToWorker::Rollout {
                    note: self.note.clone(),
                });
            }
        }
    }

    /// The workers of one role that run the current plan and are ready.
    fn side(&self, role: Role) -> canary::Sample {
        canary::side(
            self.workers
                .values()
                .filter(|w| {
                    w.ready
                        && !w.retiring
                        && w.spec.role == role
                        && Some(w.spec) == self.desired(w.slot)
                })
                .map(|w| &w.window),
        )
    }

    /// Called every second while a canary runs. Hard failures roll back at
    /// once; everything else is judged a window apart, and it takes
    /// `failure_threshold` failing judgements in a row to roll back. Each
    /// judgement is logged and becomes the rollout note (heartbeats carry it
    /// to `switchyard rollout`) with its evidence.
    pub(super) fn judge(&mut self) {
        let Some((canary_phase, _)) = self.plan.canary else {
            return;
        };
        if self.step.is_some() || self.rolling || self.stalled {
            return;
        }
        let config = self.plan.canary_config.clone();
        let judgement = canary::judge(&self.side(Role::Canary), &self.side(Role::Main), &config);
        let evidence = judgement.evidence;
        if let Verdict::Fail { signal, hard: true } = judgement.verdict {
            self.roll_back(
                canary_phase,
                signal.as_str(),
                format!("overwhelmingly worse on {}: {evidence}", signal.as_str()),
            );
            return;
        }
        let window = config.window();
        let due = *self.last_judged.get_or_insert_with(Instant::now);
        if due.elapsed() < window {
            return;
        }
        self.last_judged = Some(Instant::now());
        let service = self.service.clone();
        let note = match judgement.verdict {
            Verdict::Inconclusive => {
                tracing::info!(
                    "{service} launcher: canary {canary_phase} inconclusive over the last {window:?} (fewer than {} calls on a side after warm-up): {evidence}",
                    config.min_calls
                );
                format!("canary {canary_phase}: inconclusive: {evidence}")
            }
            Verdict::Pass => {
                self.failures = 0;
                tracing::info!(
                    "{service} launcher: canary {canary_phase} passed over the last {window:?}: {evidence}"
                );
                format!("canary {canary_phase}: passed: {evidence}")
            }
            Verdict::Fail { signal, .. } => {
                self.failures += 1;
                tracing::warn!(
                    signal = signal.as_str(),
                    "{service} launcher: canary {canary_phase} failed on {} ({} of {} in a row before a rollback): {evidence}",
                    signal.as_str(),
                    self.failures,
                    config.failure_threshold
                );
                if self.failures >= config.failure_threshold {
                    self.roll_back(
                        canary_phase,
                        signal.as_str(),
                        format!(
                            "worse on {} in {} judgements in a row: {evidence}",
                            signal.as_str(),
                            self.failures
                        ),
                    );
                    return;
                }
                format!(
                    "canary {canary_phase}: failed on {} ({} of {}): {evidence}",
                    signal.as_str(),
                    self.failures,
                    config.failure_threshold
                )
            }
        };
        self.set_note(note);
    }

    fn roll_back(&mut self, canary_phase: Phase, signal: &str, detail: String) {
        let main_phase = self.plan.main_phase;
        self.plan.canary = None;
        self.rolling = true;
        tracing::error!(
            signal,
            "{} launcher: canary {canary_phase} rolled back to {main_phase} ({signal}): {detail}",
            self.service
        );
        self.set_note(format!(
            "canary {canary_phase} rolled back to {main_phase} ({signal}): {detail}"
        ));
        let event = RolledBack {
            service: self.service.clone(),
            canary_phase: canary_phase.to_string(),
            main_phase: main_phase.to_string(),
            signal: signal.to_string(),
            detail,
            supervisor_pid: std::process::id(),
            host: switchyard_telemetry::host_name(),
        };
        let publisher = self
            .workers
            .values()
            .find(|w| w.ready && !w.retiring && w.spec.role == Role::Main)
            .and_then(|w| w.control.as_ref());
        match publisher {
            Some(control) => {
                let _ = control.send(ToWorker::Announce(event));
            }
            None => tracing::warn!(
                "{} launcher: no main worker to publish rollout.rolled_back",
                self.service
            ),
        }
        self.advance();
    }

    fn promote(&mut self) {
        let Some((canary_phase, _)) = self.plan.canary.take() else {
            tracing::warn!(
                "{} launcher: promote requested, but no canary is running",
                self.service
            );
            return;
        };
        let previous = self.plan.main_phase;
        self.plan.main_phase = canary_phase;
        self.rolling = true;
        tracing::info!(
            "{} launcher: canary {canary_phase} promoted: every worker moves from {previous} to {canary_phase} (until the next reload: set executor.phase = \"{canary_phase}\" in the configuration to keep it)",
            self.service
        );
        self.set_note(format!("canary {canary_phase} promoted from {previous}"));
        self.advance();
    }

    /// SIGTERM to every worker; waits for all of them within `grace` (plus
    /// five seconds), kills the rest.
    pub(super) async fn drain(
        &mut self,
        inbox: &mut mpsc::UnboundedReceiver<Event>,
        grace: Duration,
    ) -> ExitCode {
        tracing::info!(
            "{} launcher: draining {} worker(s)",
            self.service,
            self.workers.len()
        );
        for worker in self.workers.values_mut() {
            worker.retiring = true;
            signal(worker.pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + grace + Duration::from_secs(5);
        let mut clean = true;
        while !self.workers.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, inbox.recv()).await {
                Ok(Some(Event::Exited { id, status })) => {
                    let Some(worker) = self.workers.remove(&id) else {
                        continue;
                    };
                    if !status.clean_after_sigterm() {
                        clean = false;
                    }
                    tracing::info!(
                        worker = id,
                        "{} launcher: worker {id} (pid {}) stopped: {status}",
                        self.service,
                        worker.pid
                    );
                }
                Ok(Some(_)) => {}
                _ => {
                    for (id, worker) in &self.workers {
                        tracing::error!(
                            "{} launcher: worker {id} (pid {}) did not stop within the grace period; killing it",
                            self.service,
                            worker.pid
                        );
                        signal(worker.pid, rustix::process::Signal::KILL);
                    }
                    return ExitCode::FAILURE;
                }
            }
        }
        if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}
