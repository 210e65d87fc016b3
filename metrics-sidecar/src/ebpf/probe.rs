//! The three block-request programs: loaded once, attached and detached on
//! demand (the overhead benchmark compares both states in one run); and the
//! two throttle-wait programs, which load only where the kernel lets
//! tracing programs attach to kernel functions.

use aya::programs::fentry::FEntryLinkId;
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{BtfTracePoint, FEntry};
use aya::{Btf, Ebpf};
use thiserror::Error;

/// One program of `bpf/iogate.bpf.c`; its function name and its tracepoint
/// are the same word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracepoint {
    RqInsert,
    RqIssue,
    RqComplete,
}

impl Tracepoint {
    pub const ALL: [Tracepoint; 3] = [Tracepoint::RqInsert, Tracepoint::RqIssue, Tracepoint::RqComplete];

    pub fn name(self) -> &'static str {
        match self {
            Tracepoint::RqInsert => "block_rq_insert",
            Tracepoint::RqIssue => "block_rq_issue",
            Tracepoint::RqComplete => "block_rq_complete",
        }
    }
}

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("expected program {0} in the eBPF object, found none")]
    Missing(&'static str),
    #[error("expected {0} to be a tp_btf program, found another program type")]
    WrongType(&'static str),
    #[error("loading tp_btf/{0}: {1}")]
    Load(&'static str, #[source] aya::programs::ProgramError),
    #[error("attaching tp_btf/{0}: {1}")]
    Attach(&'static str, #[source] aya::programs::ProgramError),
    #[error("detaching tp_btf/{0}: {1}")]
    Detach(&'static str, #[source] aya::programs::ProgramError),
    #[error("expected {0} to be an fentry program, found another program type")]
    NotFEntry(&'static str),
    #[error("loading fentry/{0}: {1}")]
    LoadFEntry(&'static str, #[source] aya::programs::ProgramError),
    #[error("attaching fentry/{0}: {1}")]
    AttachFEntry(&'static str, #[source] aya::programs::ProgramError),
    #[error("detaching fentry/{0}: {1}")]
    DetachFEntry(&'static str, #[source] aya::programs::ProgramError),
}

/// One throttle-wait program of `bpf/iogate.bpf.c`: its name, and the
/// kernel function it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleHook {
    /// blk-throttle queues a bio over its group's limit.
    Hold,
    /// A bio is submitted onward: the throttle's dispatch releases held
    /// bios this way.
    Release,
}

impl ThrottleHook {
    pub const ALL: [ThrottleHook; 2] = [ThrottleHook::Hold, ThrottleHook::Release];

    pub fn name(self) -> &'static str {
        match self {
            ThrottleHook::Hold => "throttle_hold",
            ThrottleHook::Release => "throttle_release",
        }
    }

    pub fn kernel_function(self) -> &'static str {
        match self {
            ThrottleHook::Hold => "throtl_add_bio_tg",
            ThrottleHook::Release => "submit_bio_noacct_nocheck",
        }
    }
}

fn fentry(ebpf: &mut Ebpf, hook: ThrottleHook) -> Result<&mut FEntry, ProbeError> {
    let name = hook.name();
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    prog.try_into().map_err(|_| ProbeError::NotFEntry(name))
}

/// The throttle-wait programs, loaded, and their links while attached.
pub struct ThrottleProbes {
    links: Vec<(ThrottleHook, FEntryLinkId)>,
}

impl ThrottleProbes {
    /// Loads both programs; fails where the kernel refuses fentry (a
    /// locked-down kernel answers EPERM) or lacks either function.
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<ThrottleProbes, ProbeError> {
        for hook in ThrottleHook::ALL {
            fentry(ebpf, hook)?
                .load(hook.kernel_function(), btf)
                .map_err(|e| ProbeError::LoadFEntry(hook.kernel_function(), e))?;
        }
        Ok(ThrottleProbes { links: Vec::new() })
    }

    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Both or neither: a hold never released would count nothing, and
    /// releases without holds find nothing.
    pub fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.is_attached() {
            return Ok(());
        }
        for hook in ThrottleHook::ALL {
            match fentry(ebpf, hook)
                .and_then(|p| p.attach().map_err(|e| ProbeError::AttachFEntry(hook.kernel_function(), e)))
            {
                Ok(link) => self.links.push((hook, link)),
                Err(e) => {
                    let _ = self.detach(ebpf);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    pub fn detach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let mut first_error = None;
        for (hook, link) in self.links.drain(..) {
            let result = fentry(ebpf, hook)
                .and_then(|p| p.detach(link).map_err(|e| ProbeError::DetachFEntry(hook.kernel_function(), e)));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The programs, loaded into the kernel, and their links while attached.
pub struct Probes {
    links: Vec<(Tracepoint, BtfTracePointLinkId)>,
}

fn program(ebpf: &mut Ebpf, tp: Tracepoint) -> Result<&mut BtfTracePoint, ProbeError> {
    let name = tp.name();
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    prog.try_into().map_err(|_| ProbeError::WrongType(name))
}

impl Probes {
    /// Loads every program (verifier and CO-RE relocation happen here).
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<Probes, ProbeError> {
        for tp in Tracepoint::ALL {
            program(ebpf, tp)?.load(tp.name(), btf).map_err(|e| ProbeError::Load(tp.name(), e))?;
        }
        Ok(Probes { links: Vec::new() })
    }

    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Attaches all three, or none: with only some attached, requests would
    /// be seen issued but never completed (or the reverse) and the counts
    /// would silently fall short.
    pub fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.is_attached() {
            return Ok(());
        }
        for tp in Tracepoint::ALL {
            match program(ebpf, tp).and_then(|p| p.attach().map_err(|e| ProbeError::Attach(tp.name(), e))) {
                Ok(link) => self.links.push((tp, link)),
                Err(e) => {
                    let _ = self.detach(ebpf);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Detaches every attached program; the maps and their counters stay.
    pub fn detach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        let mut first_error = None;
        for (tp, link) in self.links.drain(..) {
            let result = program(ebpf, tp).and_then(|p| p.detach(link).map_err(|e| ProbeError::Detach(tp.name(), e)));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
