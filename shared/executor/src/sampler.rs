//! What a slow poll's thread was blocked in, sampled by another thread while
//! the poll still runs.
//!
//! The poll timer ([`crate::watch`]) learns that a poll was slow only when
//! it ends, and the thread's counters ([`crate::sched`]) then tell computing
//! from blocking, but not what it blocked in. For a thread that is blocked,
//! Linux shows the system call it is in and that call's arguments
//! (`/proc/<pid>/task/<tid>/syscall`, proc(5)), and the kernel function it
//! sleeps in (`wchan`). Read by another thread while the poll runs, they
//! name the call: `futex` (a lock or a condition variable), `write` on a
//! pipe that is full, `clock_nanosleep`, `connect`; for a call on a file
//! descriptor, also what the descriptor is (`/proc/self/fd/<fd>`: a path,
//! `pipe:[…]`, `socket:[…]`).
//!
//! Sampling takes a thread that wakes every few milliseconds, which a
//! service whose polls are all fast should not pay for. So the sampler
//! sleeps until a slow poll is reported, and then samples every poll in
//! progress for [`ARMED_FOR`] after the last slow one: the first slow poll
//! of a quiet spell is told without its call, those that follow name it.
//! A poll itself pays two stores to its thread's slot.
//!
//! Where the files cannot be read (not Linux), nothing is sampled.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long the sampler keeps sampling after the last slow poll.
pub(crate) const ARMED_FOR: Duration = Duration::from_secs(60);

/// A system call, as `/proc/<pid>/task/<tid>/syscall` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Runnable (the kernel says `running`): on a CPU or waiting for one,
    /// not blocked.
    Runnable,
    /// Blocked in system call `number`, whose first argument is `first`.
    In { number: u64, first: u64 },
    /// Blocked outside any system call (a page fault, say).
    Outside,
}

/// The system calls whose first argument is the file descriptor they wait
/// on.
const ON_A_DESCRIPTOR: &[&str] = &[
    "read",
    "write",
    "pread64",
    "pwrite64",
    "readv",
    "writev",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "connect",
    "accept",
    "accept4",
    "fsync",
    "fdatasync",
    "flock",
    "fcntl",
    "ioctl",
    "ftruncate",
    "fallocate",
    "epoll_wait",
    "epoll_pwait",
];

impl Call {
    /// Parses the file's one line: `running`, `-1 <sp> <pc>` (blocked
    /// outside a call), or `<number> <six arguments> <sp> <pc>` with the
    /// arguments in hexadecimal.
    pub fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_ascii_whitespace();
        let first = fields.next()?;
        if first == "running" {
            return Some(Self::Runnable);
        }
        if first == "-1" {
            return Some(Self::Outside);
        }
        let number = first.parse().ok()?;
        let argument = fields.next()?;
        let first =
            u64::from_str_radix(argument.strip_prefix("0x").unwrap_or(argument), 16).ok()?;
        Some(Self::In { number, first })
    }

    /// The call's name in this machine's system call table.
    pub fn name(&self) -> Option<&'static str> {
        let Self::In { number, .. } = self else {
            return None;
        };
        let number = usize::try_from(*number).ok()?;
        syscalls::Sysno::new(number).map(|call| call.name())
    }

    /// The file descriptor the call waits on, where its first argument is
    /// one.
    pub fn descriptor(&self) -> Option<u64> {
        let Self::In { first, .. } = self else {
            return None;
        };
        let name = self.name()?;
        ON_A_DESCRIPTOR.contains(&name).then_some(*first)
    }
}

/// What the sampler saw of a poll in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sample {
    /// How far into the poll.
    pub after: Duration,
    pub call: Call,
    /// What the call's file descriptor is (`pipe:[…]`, a path).
    pub descriptor: Option<String>,
    /// The kernel function the thread slept in.
    pub kernel: Option<String>,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.after.as_secs_f64() * 1e3;
        write!(f, "{ms:.1} ms into the poll its thread was ")?;
        match self.call {
            Call::Runnable => {
                return write!(f, "runnable (on a CPU or waiting for one), not blocked");
            }
            Call::Outside => write!(f, "blocked outside a system call")?,
            Call::In { number, .. } => match self.call.name() {
                Some(name) => write!(f, "blocked in `{name}`")?,
                None => write!(f, "blocked in system call {number}")?,
            },
        }
        if let (Some(fd), Some(what)) = (self.call.descriptor(), &self.descriptor) {
            write!(f, " on fd {fd} ({what})")?;
        }
        if let Some(kernel) = &self.kernel {
            write!(f, ", in the kernel's `{kernel}`")?;
        }
        Ok(())
    }
}

/// One thread's poll in progress, shared with the sampler.
struct Slot {
    /// `/proc/<pid>/task/<tid>`.
    task: PathBuf,
    /// When the poll in progress began ([`token`]); 0 when there is none.
    started: AtomicU64,
    /// The sample of the poll whose token it holds.
    sample: Mutex<Option<(u64, Sample)>>,
}

impl Slot {
    /// Reads what the thread is doing now, `after` into its poll.
    fn read(&self, after: Duration) -> Option<Sample> {
        let text = std::fs::read_to_string(self.task.join("syscall")).ok()?;
        let call = Call::parse(&text)?;
        let descriptor = call.descriptor().and_then(|fd| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .ok()
                .map(|target| target.display().to_string())
        });
        let kernel = match call {
            Call::Runnable => None,
            _ => std::fs::read_to_string(self.task.join("wchan"))
                .ok()
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty() && name != "0"),
        };
        Some(Sample {
            after,
            call,
            descriptor,
            kernel,
        })
    }
}

/// The instant tokens count from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// A poll's token: when it began, in ns since [`base`], never 0.
fn token(at: Instant) -> u64 {
    let ns = at.saturating_duration_since(base()).as_nanos();
    u64::try_from(ns).unwrap_or(u64::MAX - 1) + 1
}

/// When a token's poll began.
fn began(token: u64) -> Instant {
    base() + Duration::from_nanos(token - 1)
}

struct Armed {
    /// Sampling until then.
    until: Option<Instant>,
    /// How often to sample, and how long a poll must have run to be
    /// sampled.
    tick: Duration,
    /// Whether the sampling thread was started.
    thread: bool,
}

struct Sampler {
    armed: Mutex<Armed>,
    woken: Condvar,
    slots: Mutex<Vec<Weak<Slot>>>,
}

fn sampler() -> &'static Sampler {
    static SAMPLER: OnceLock<Sampler> = OnceLock::new();
    SAMPLER.get_or_init(|| Sampler {
        armed: Mutex::new(Armed {
            until: None,
            tick: Duration::MAX,
            thread: false,
        }),
        woken: Condvar::new(),
        slots: Mutex::new(Vec::new()),
    })
}

thread_local! {
    static SLOT: Option<Arc<Slot>> = register();
}

/// This thread's slot, listed for the sampler; `None` where threads have
/// no `/proc` entry.
fn register() -> Option<Arc<Slot>> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let slot = Arc::new(Slot {
        task: PathBuf::from("/proc").join(link),
        started: AtomicU64::new(0),
        sample: Mutex::new(None),
    });
    let mut slots = lock(&sampler().slots);
    slots.retain(|slot| slot.strong_count() > 0);
    slots.push(Arc::downgrade(&slot));
    Some(slot)
}

/// A poll in progress on this thread.
pub(crate) struct InPoll {
    token: u64,
    /// The token of the poll this one is nested in (0: none).
    outer: u64,
}

/// Shows the sampler that a poll began on this thread `at`.
pub(crate) fn begin(at: Instant) -> InPoll {
    let token = token(at);
    // Only this thread writes its slot: a load and a store, not a swap.
    // `try_with`: a poll while the thread's locals are torn down is not
    // shown, rather than a panic.
    let outer = SLOT
        .try_with(|slot| match slot {
            Some(slot) => {
                let outer = slot.started.load(Ordering::Relaxed);
                slot.started.store(token, Ordering::Relaxed);
                outer
            }
            None => 0,
        })
        .unwrap_or(0);
    InPoll { token, outer }
}

/// The poll ended.
pub(crate) fn end(poll: &InPoll) {
    let _ = SLOT.try_with(|slot| {
        if let Some(slot) = slot {
            slot.started.store(poll.outer, Ordering::Release);
        }
    });
}

/// What the sampler saw of an ended poll, if anything: asked only of slow
/// polls, as it takes a lock.
pub(crate) fn seen(poll: &InPoll) -> Option<Sample> {
    SLOT.try_with(|slot| {
        let slot = slot.as_ref()?;
        let mut sample = lock(&slot.sample);
        match sample.take() {
            Some((token, seen)) if token == poll.token => Some(seen),
            other => {
                *sample = other;
                None
            }
        }
    })
    .ok()
    .flatten()
}

/// A slow poll was reported: sample polls that run longer than `tick`,
/// every `tick`, for [`ARMED_FOR`].
pub(crate) fn arm(tick: Duration) {
    let sampler = sampler();
    let mut armed = lock(&sampler.armed);
    armed.until = Some(Instant::now() + ARMED_FOR);
    armed.tick = armed.tick.min(tick.max(Duration::from_millis(1)));
    if !armed.thread {
        let spawned = thread::Builder::new()
            .name("switchyard-poll-sampler".to_string())
            .spawn(|| sample_while_armed(self::sampler()));
        // Without a thread nothing is sampled: the warnings just do not
        // name their call.
        armed.thread = spawned.is_ok();
    }
    sampler.woken.notify_one();
}

fn sample_while_armed(sampler: &Sampler) {
    loop {
        let tick = {
            let mut armed = lock(&sampler.armed);
            while armed.until.is_none_or(|until| until <= Instant::now()) {
                armed.until = None;
                armed.tick = Duration::MAX;
                armed = sampler
                    .woken
                    .wait(armed)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            armed.tick
        };
        thread::sleep(tick);
        let slots: Vec<_> = lock(&sampler.slots)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for slot in slots {
            sample(&slot, tick);
        }
    }
}

/// Samples the slot's poll if it has run at least `tick` and has no
/// sample that tells more. The sample is kept only if the poll is still
/// the one in progress after the read: read after it ended, the call would
/// be whatever the thread did next.
fn sample(slot: &Slot, tick: Duration) {
    let token = slot.started.load(Ordering::Acquire);
    if token == 0 {
        return;
    }
    let after = began(token).elapsed();
    if after < tick {
        return;
    }
    if let Some((seen, sample)) = &*lock(&slot.sample)
        && *seen == token
        && sample.call != Call::Runnable
    {
        return;
    }
    let Some(sample) = slot.read(after) else {
        return;
    };
    if slot.started.load(Ordering::Acquire) == token {
        *lock(&slot.sample) = Some((token, sample));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_line_gives_the_call_and_its_first_argument() {
        assert_eq!(
            Call::parse("230 0x1 0x1 0x7fbad0cfbab0 0x0 0x0 0x0 0x7fbad0cfba70 0x7fba\n"),
            Some(Call::In {
                number: 230,
                first: 1
            })
        );
        assert_eq!(Call::parse("running\n"), Some(Call::Runnable));
        assert_eq!(
            Call::parse("-1 0x7ffe2d3c 0x7f0a1b2c\n"),
            Some(Call::Outside)
        );
        assert_eq!(Call::parse(""), None);
        assert_eq!(Call::parse("1"), None);
    }

    #[test]
    fn a_call_on_a_descriptor_names_it_and_others_do_not() {
        let write = syscalls::Sysno::write as u64;
        let nanosleep = syscalls::Sysno::clock_nanosleep as u64;
        let call = Call::In {
            number: write,
            first: 2,
        };
        assert_eq!(call.name(), Some("write"));
        assert_eq!(call.descriptor(), Some(2));
        let call = Call::In {
            number: nanosleep,
            first: 1,
        };
        assert_eq!(call.name(), Some("clock_nanosleep"));
        assert_eq!(call.descriptor(), None);
    }

    #[test]
    fn a_sample_says_what_the_thread_was_in() {
        let sample = Sample {
            after: Duration::from_micros(6_500),
            call: Call::In {
                number: syscalls::Sysno::write as u64,
                first: 2,
            },
            descriptor: Some("pipe:[4242]".to_string()),
            kernel: Some("pipe_write".to_string()),
        };
        assert_eq!(
            sample.to_string(),
            "6.5 ms into the poll its thread was blocked in `write` on fd 2 (pipe:[4242]), \
             in the kernel's `pipe_write`"
        );
        let running = Sample {
            call: Call::Runnable,
            descriptor: None,
            kernel: None,
            ..sample
        };
        assert_eq!(
            running.to_string(),
            "6.5 ms into the poll its thread was runnable (on a CPU or waiting for one), not blocked"
        );
    }

    #[test]
    fn tokens_are_never_zero_and_give_back_their_instant() {
        assert_ne!(token(base()), 0);
        let now = Instant::now();
        assert_eq!(began(token(now)), now);
    }
}
