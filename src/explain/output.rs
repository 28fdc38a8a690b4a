//! Writing explanations as they come: text blocks, or one JSON document
//! (`{"events": [...], "summary": {...}}`) written event by event, so nothing is held.

use std::io::Write;

use serde_json::Value;

use super::{ExplainError, Summary};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Where explanations go, in `format`.
pub struct Output<W: Write> {
    format: Format,
    out: W,
    written: usize,
    /// The reader went away (`| head`): it has what it wanted, nothing failed.
    gone: bool,
}

impl<W: Write> Output<W> {
    pub fn new(format: Format, out: W) -> Self {
        Output {
            format,
            out,
            written: 0,
            gone: false,
        }
    }

    /// Whether the reader went away (the rest was not written, and need not be).
    pub fn reader_gone(&self) -> bool {
        self.gone
    }

    /// Writes one explained event.
    pub fn event(&mut self, explained: &Value) -> Result<(), ExplainError> {
        let first = self.written == 0;
        self.written += 1;
        let written = match self.format {
            Format::Text => {
                let gap = if first { "" } else { "\n" };
                writeln!(self.out, "{gap}{}", super::to_text(explained))
            }
            Format::Json => {
                let open = if first { "{\"events\": [\n" } else { ",\n" };
                self.out.write_all(open.as_bytes()).and_then(|()| {
                    serde_json::to_writer(&mut self.out, explained).map_err(std::io::Error::from)
                })
            }
        };
        self.check(written)
    }

    /// Ends with the summary (text: unless nothing was read, which is said on stderr).
    pub fn finish(&mut self, summary: &Summary) -> Result<(), ExplainError> {
        let written = match self.format {
            Format::Text if self.written == 0 => {
                eprintln!("explain: the input holds no events");
                Ok(())
            }
            Format::Text => writeln!(self.out, "\n{}", summary.to_text()),
            Format::Json => {
                let open = if self.written == 0 {
                    "{\"events\": ["
                } else {
                    "\n"
                };
                self.out
                    .write_all(format!("{open}],\n\"summary\": ").as_bytes())
                    .and_then(|()| {
                        serde_json::to_writer(&mut self.out, summary).map_err(std::io::Error::from)
                    })
                    .and_then(|()| self.out.write_all(b"}\n"))
            }
        };
        let flushed = written.and_then(|()| self.out.flush());
        self.check(flushed)
    }

    fn check(&mut self, written: std::io::Result<()>) -> Result<(), ExplainError> {
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Err(ExplainError("the reader went away".to_owned()))
            }
            other => other.map_err(|e| ExplainError::output("to standard output", &e)),
        }
    }
}
