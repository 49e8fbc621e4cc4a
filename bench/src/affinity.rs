//! Which cores run what: the gateway alone on core 0, the load generator and the upstream on
//! core 1, so the gateway's throughput is one core's and the client never steals from it.

/// The gateway's core, and the crypto ceiling's.
pub const GATEWAY_CPU: usize = 0;
/// The load generator's core.
pub const CLIENT_CPU: usize = 1;

/// Cores this machine has online (not `available_parallelism`, which shrinks to the pinned set).
pub fn cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// Whether pinning means anything: with one core, the gateway and the client share it anyway.
pub fn can_pin() -> bool {
    cpus() >= 2
}

fn set(cpus: impl IntoIterator<Item = usize>) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes within it, and
    // sched_setaffinity(0, ...) only reads it, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins the calling thread (and the threads it starts afterwards) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    set([cpu])
}

/// Lets the calling thread run anywhere again (bulk signing, while the gateway is idle).
pub fn allow_all_cpus() {
    // Best effort: signing on one core is only slower.
    let _ = set(0..cpus());
}

/// Makes `command`'s process start pinned to `cpu`, every thread it starts included.
pub fn pin_child(command: &mut std::process::Command, cpu: usize) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; sched_setaffinity is async-signal-safe and
    // `set` allocates nothing.
    unsafe {
        command.pre_exec(move || set([cpu]));
    }
}
