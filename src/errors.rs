//! How an error is said: in one line, with its causes.

/// An error and its causes in one line: `error = %Chain(&e)` in a log line.
///
/// clusterscope's own errors say their own part only and give what they wrap as `source()`
/// (kube-runtime's convention), so the line is each part once. Some libraries' errors (kube's
/// `watcher::Error`, sqlx's) also quote their source in their own text: a cause the line
/// already holds is not added again.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

/// [`Chain`] as a string.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own errors say their own part only: the line has every part once, in order.
    #[test]
    fn each_part_of_the_chain_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let read = crate::tls::TlsError::Read {
            flag: "--tls-cert ",
            path: "/etc/tls/tls.crt".into(),
            source: io(),
        };
        assert_eq!(
            error_chain(&read),
            "cannot read --tls-cert /etc/tls/tls.crt: No such file or directory"
        );
        let written = crate::certs::CertsError::Write {
            path: "/x/tls.key".into(),
            source: io(),
        };
        let bind = crate::server::BindError::SelfSigned(written);
        assert_eq!(
            Chain(&bind).to_string(),
            "cannot make a self-signed pair in --cert-dir: cannot write /x/tls.key: No such file or directory"
        );
        for e in [&read as &dyn std::error::Error, &bind] {
            let own = e.to_string();
            let cause = e.source().map(ToString::to_string).unwrap_or_default();
            assert!(
                !own.contains(&cause),
                "{own:?} says its cause {cause:?} too"
            );
        }
    }

    /// A library error that quotes its source (kube's, sqlx's) is not followed by it again.
    #[test]
    fn a_cause_the_line_already_holds_is_not_added_again() {
        #[derive(Debug)]
        struct Quoting(std::io::Error);
        impl std::fmt::Display for Quoting {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "list failed: {}", self.0)
            }
        }
        impl std::error::Error for Quoting {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Quoting(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "list failed: connection refused");
    }
}
