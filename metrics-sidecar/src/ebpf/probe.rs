//! The programs of `bpf/iogate.bpf.c`, in two sets that each load, attach
//! and detach whole: the three block-request programs (attached and
//! detached on demand: the overhead benchmark compares both states in one
//! run), and the two throttle-wait programs, which load only where the
//! kernel lets tracing programs attach to kernel functions.

use aya::programs::fentry::FEntryLinkId;
use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::{BtfTracePoint, FEntry, ProgramError};
use aya::{Btf, Ebpf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("expected program {0} in the eBPF object, found none")]
    Missing(&'static str),
    #[error("expected {name} to be a {section} program, found another program type")]
    WrongType { name: &'static str, section: &'static str },
    #[error("loading {section}/{target}: {source}")]
    Load { section: &'static str, target: &'static str, source: ProgramError },
    #[error("attaching {section}/{target}: {source}")]
    Attach { section: &'static str, target: &'static str, source: ProgramError },
    #[error("detaching {section}/{target}: {source}")]
    Detach { section: &'static str, target: &'static str, source: ProgramError },
}

/// One program of a set: its name in the object, and what it attaches to,
/// through which kind of program.
pub trait Hook: Copy + Sized + 'static {
    /// Every program of the set, in attach order.
    const ALL: &'static [Self];
    /// The ELF section prefix (`tp_btf`, `fentry`), for messages.
    const SECTION: &'static str;
    type Program: 'static;
    type Link;

    fn name(self) -> &'static str;
    /// The tracepoint or kernel function it attaches to.
    fn target(self) -> &'static str;
    fn program(prog: &mut aya::programs::Program) -> Option<&mut Self::Program>;
    fn load(prog: &mut Self::Program, target: &str, btf: &Btf) -> Result<(), ProgramError>;
    fn attach(prog: &mut Self::Program) -> Result<Self::Link, ProgramError>;
    fn detach(prog: &mut Self::Program, link: Self::Link) -> Result<(), ProgramError>;
}

/// A block-request program; its function name and its tracepoint are the
/// same word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracepoint {
    RqInsert,
    RqIssue,
    RqComplete,
}

impl Hook for Tracepoint {
    const ALL: &'static [Tracepoint] = &[Tracepoint::RqInsert, Tracepoint::RqIssue, Tracepoint::RqComplete];
    const SECTION: &'static str = "tp_btf";
    type Program = BtfTracePoint;
    type Link = BtfTracePointLinkId;

    fn name(self) -> &'static str {
        match self {
            Tracepoint::RqInsert => "block_rq_insert",
            Tracepoint::RqIssue => "block_rq_issue",
            Tracepoint::RqComplete => "block_rq_complete",
        }
    }

    fn target(self) -> &'static str {
        self.name()
    }

    fn program(prog: &mut aya::programs::Program) -> Option<&mut BtfTracePoint> {
        prog.try_into().ok()
    }

    fn load(prog: &mut BtfTracePoint, target: &str, btf: &Btf) -> Result<(), ProgramError> {
        prog.load(target, btf)
    }

    fn attach(prog: &mut BtfTracePoint) -> Result<BtfTracePointLinkId, ProgramError> {
        prog.attach()
    }

    fn detach(prog: &mut BtfTracePoint, link: BtfTracePointLinkId) -> Result<(), ProgramError> {
        prog.detach(link)
    }
}

/// A throttle-wait program: its name, and the kernel function it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottleHook {
    /// blk-throttle queues a bio over its group's limit.
    Hold,
    /// A bio is submitted onward: the throttle's dispatch releases held
    /// bios this way.
    Release,
}

impl Hook for ThrottleHook {
    const ALL: &'static [ThrottleHook] = &[ThrottleHook::Hold, ThrottleHook::Release];
    const SECTION: &'static str = "fentry";
    type Program = FEntry;
    type Link = FEntryLinkId;

    fn name(self) -> &'static str {
        match self {
            ThrottleHook::Hold => "throttle_hold",
            ThrottleHook::Release => "throttle_release",
        }
    }

    fn target(self) -> &'static str {
        match self {
            ThrottleHook::Hold => "throtl_add_bio_tg",
            ThrottleHook::Release => "submit_bio_noacct_nocheck",
        }
    }

    fn program(prog: &mut aya::programs::Program) -> Option<&mut FEntry> {
        prog.try_into().ok()
    }

    fn load(prog: &mut FEntry, target: &str, btf: &Btf) -> Result<(), ProgramError> {
        prog.load(target, btf)
    }

    fn attach(prog: &mut FEntry) -> Result<FEntryLinkId, ProgramError> {
        prog.attach()
    }

    fn detach(prog: &mut FEntry, link: FEntryLinkId) -> Result<(), ProgramError> {
        prog.detach(link)
    }
}

fn program<H: Hook>(ebpf: &mut Ebpf, hook: H) -> Result<&mut H::Program, ProbeError> {
    let name = hook.name();
    let prog = ebpf.program_mut(name).ok_or(ProbeError::Missing(name))?;
    H::program(prog).ok_or(ProbeError::WrongType { name, section: H::SECTION })
}

/// A set of programs, loaded into the kernel, and their links while
/// attached.
pub struct Links<H: Hook> {
    links: Vec<(H, H::Link)>,
}

/// The block-request programs.
pub type Probes = Links<Tracepoint>;
/// The throttle-wait programs: they load only where the kernel allows
/// fentry (a locked-down kernel answers EPERM) and has both functions.
pub type ThrottleProbes = Links<ThrottleHook>;

impl<H: Hook> Links<H> {
    /// Loads every program of the set (verifier and CO-RE relocation
    /// happen here).
    pub fn load(ebpf: &mut Ebpf, btf: &Btf) -> Result<Links<H>, ProbeError> {
        for &hook in H::ALL {
            H::load(program(ebpf, hook)?, hook.target(), btf).map_err(|source| ProbeError::Load {
                section: H::SECTION,
                target: hook.target(),
                source,
            })?;
        }
        Ok(Links { links: Vec::new() })
    }

    pub fn is_attached(&self) -> bool {
        !self.links.is_empty()
    }

    /// Attaches all, or none: with only some of the request programs
    /// attached, requests would be seen issued but never completed (or the
    /// reverse) and the counts would silently fall short; a throttle hold
    /// never released counts nothing.
    pub fn attach(&mut self, ebpf: &mut Ebpf) -> Result<(), ProbeError> {
        if self.is_attached() {
            return Ok(());
        }
        for &hook in H::ALL {
            let attached = program(ebpf, hook).and_then(|p| {
                H::attach(p).map_err(|source| ProbeError::Attach { section: H::SECTION, target: hook.target(), source })
            });
            match attached {
                Ok(link) => self.links.push((hook, link)),
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
        for (hook, link) in self.links.drain(..) {
            let result = program(ebpf, hook).and_then(|p| {
                H::detach(p, link).map_err(|source| ProbeError::Detach {
                    section: H::SECTION,
                    target: hook.target(),
                    source,
                })
            });
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
