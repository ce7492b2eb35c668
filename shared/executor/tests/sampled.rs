//! A slow poll's warning names what its thread was blocked in, once a slow
//! poll has turned the sampler on: a lock, a sleep, a read from a pipe, or
//! nothing (running code). Linux only: the sampler reads `/proc`.

mod support;

use std::io::{Read as _, Write as _};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{OnThisThread, slow_poll_warning as warning};
use switchyard_executor::Endpoint;

/// Far over the 10 ms slow-poll threshold, and over the sampler's 2.5 ms
/// tick many times.
const HELD: Duration = Duration::from_millis(50);

#[test]
fn a_slow_polls_warning_names_the_call_its_thread_was_blocked_in() {
    let log = switchyard_testkit::Log::global();
    let here = OnThisThread::new();

    // The first slow poll of a quiet spell turns the sampler on.
    let first = Endpoint::from_async("first", |_, ()| async {
        std::thread::sleep(HELD);
    });
    let sleeps = Endpoint::from_async("sleeps", |_, ()| async {
        std::thread::sleep(HELD);
    });
    let locks = Endpoint::from_async("locks", |_, ()| async {
        let lock = Arc::new(Mutex::new(()));
        let (held, is_held) = mpsc::channel();
        let holder = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                let _guard = lock.lock().expect("the lock");
                held.send(()).expect("the poll waits");
                std::thread::sleep(HELD);
            })
        };
        is_held.recv().expect("the holder took the lock");
        drop(lock.lock().expect("the lock"));
        holder.join().expect("the holder");
    });
    let reads = Endpoint::from_async("reads", |_, ()| async {
        let (mut reader, mut writer) = std::io::pipe().expect("a pipe");
        let writes = std::thread::spawn(move || {
            std::thread::sleep(HELD);
            writer.write_all(b"late").expect("written");
        });
        let mut read = [0u8; 4];
        reader.read_exact(&mut read).expect("read");
        writes.join().expect("the writer");
    });
    let spins = Endpoint::from_async("spins", |_, ()| async {
        let started = Instant::now();
        while started.elapsed() < HELD {
            std::hint::spin_loop();
        }
    });
    here.run_each([first, sleeps, locks, reads, spins]);

    let text = log.text();
    let sleeping = warning(&text, "sleeps");
    assert!(
        sleeping.contains("nanosleep`"),
        "a sleep is a nanosleep: {sleeping}"
    );
    let locking = warning(&text, "locks");
    assert!(
        locking.contains("blocked in `futex`"),
        "a lock is a futex: {locking}"
    );
    let reading = warning(&text, "reads");
    assert!(
        reading.contains("blocked in `read` on fd ") && reading.contains("(pipe:["),
        "a read on a pipe names both: {reading}"
    );
    let spinning = warning(&text, "spins");
    assert!(
        spinning.contains("its thread was runnable (on a CPU or waiting for one), not blocked"),
        "spinning code is not blocked: {spinning}"
    );
}
