//! The name and index a plugin registers with, and how containerd hands a
//! plugin it launched its connection.

use std::env;
use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

/// Environment containerd sets for plugins it launches from `plugin_path`.
pub const PLUGIN_NAME_ENV: &str = "NRI_PLUGIN_NAME";
pub const PLUGIN_IDX_ENV: &str = "NRI_PLUGIN_IDX";
/// The number of an inherited, already connected socket (containerd uses 3).
pub const PLUGIN_SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("invalid plugin name {0:?}: must be non-empty and use only letters, digits, '-', '_', '.', '+'")]
    Name(String),
    #[error("invalid plugin index {0:?}: must be exactly two digits")]
    Index(String),
    #[error("{PLUGIN_SOCKET_ENV}={0:?} is not a file descriptor number")]
    SocketNumber(String),
    #[error("{PLUGIN_SOCKET_ENV} is set but {0} is not")]
    Missing(&'static str),
    #[error("the pre-connected NRI socket was already taken by this process")]
    AlreadyTaken,
    #[error("descriptor {fd} from {PLUGIN_SOCKET_ENV} is not a usable socket")]
    NotASocket { fd: i32, source: std::io::Error },
}

/// A plugin's name and invocation index ("10" runs before "20"), as it
/// registers with the runtime, which calls the plugin `<index>-<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    name: String,
    index: String,
}

impl Registration {
    /// Checks both the way containerd checks externally started plugins,
    /// which it disconnects when either is invalid.
    pub fn new(name: impl Into<String>, index: impl Into<String>) -> Result<Registration, RegistrationError> {
        let (name, index) = (name.into(), index.into());
        let name_ok =
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
        if !name_ok {
            return Err(RegistrationError::Name(name));
        }
        if index.len() != 2 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RegistrationError::Index(index));
        }
        Ok(Registration { name, index })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> &str {
        &self.index
    }
}

impl fmt::Display for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.index, self.name)
    }
}

/// A plugin containerd launched itself: it found the executable as
/// `<plugin_path>/<index>-<name>` and passed a connected socket.
#[derive(Debug)]
pub struct PreRegistered {
    pub registration: Registration,
    pub socket: UnixStream,
}

/// The inherited descriptor may be adopted only once per process.
static SOCKET_TAKEN: AtomicBool = AtomicBool::new(false);

impl PreRegistered {
    /// `Ok(None)` when the process was not launched by containerd (no
    /// `NRI_PLUGIN_SOCKET`), i.e. it should connect to the NRI socket itself.
    pub fn from_env() -> Result<Option<PreRegistered>, RegistrationError> {
        let Some(number) = env::var_os(PLUGIN_SOCKET_ENV) else {
            return Ok(None);
        };
        let number = number.to_string_lossy().into_owned();
        let fd: i32 = match number.trim().parse() {
            Ok(fd) if fd >= 0 => fd,
            _ => return Err(RegistrationError::SocketNumber(number)),
        };
        let name = env::var(PLUGIN_NAME_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(RegistrationError::Missing(PLUGIN_NAME_ENV))?;
        let index = env::var(PLUGIN_IDX_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or(RegistrationError::Missing(PLUGIN_IDX_ENV))?;
        // containerd ignores the name a launched plugin registers with (it
        // already named it after the file), so its naming is not re-checked.
        let registration = Registration { name, index };

        if SOCKET_TAKEN.swap(true, Ordering::SeqCst) {
            return Err(RegistrationError::AlreadyTaken);
        }
        let socket = adopt_socket(fd)?;
        Ok(Some(PreRegistered { registration, socket }))
    }
}

/// Takes ownership of the inherited socket and re-creates it close-on-exec:
/// Go's `ExtraFiles` leaves it inheritable, and processes we start must not
/// hold containerd's connection open.
fn adopt_socket(fd: i32) -> Result<UnixStream, RegistrationError> {
    // SAFETY: containerd passed this descriptor for us alone, nothing else
    // in the process refers to it, and SOCKET_TAKEN makes this run once.
    let inherited = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // getsockname fails with ENOTSOCK/EBADF unless it is a socket.
    if let Err(source) = inherited.local_addr() {
        // Not ours to close if it is not what containerd promised.
        std::mem::forget(inherited);
        return Err(RegistrationError::NotASocket { fd, source });
    }
    // try_clone duplicates with F_DUPFD_CLOEXEC; dropping the original
    // closes the inheritable descriptor.
    inherited.try_clone().map_err(|source| RegistrationError::NotASocket { fd, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_follows_containerd_rules() {
        assert_eq!(Registration::new("iogate", "10").unwrap().to_string(), "10-iogate");
        assert!(Registration::new("io-gate_v1.2+x", "00").is_ok());
        assert!(matches!(Registration::new("", "10"), Err(RegistrationError::Name(_))));
        assert!(matches!(Registration::new("io gate", "10"), Err(RegistrationError::Name(_))));
        assert!(matches!(Registration::new("iogate", "1"), Err(RegistrationError::Index(_))));
        assert!(matches!(Registration::new("iogate", "1a"), Err(RegistrationError::Index(_))));
        assert!(matches!(Registration::new("iogate", "100"), Err(RegistrationError::Index(_))));
    }
}
