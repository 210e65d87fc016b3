//! The three block-request programs: loaded once, attached and detached on
//! demand (the overhead benchmark compares both states in one run).

use aya::programs::tp_btf::BtfTracePointLinkId;
use aya::programs::BtfTracePoint;
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
