//! Plain HTTP sent to the HTTPS port (a client configured with `http://`): answered with a
//! readable 400 saying to use `https://`, instead of TLS bytes the client cannot read.

/// What the client is told.
const ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 86\r\n\r\nThis port serves HTTPS only (TLS): call it with https://, trusting the webhook's CA.\r\n";

/// Whether the first byte the client sent starts an HTTP request line (a method in capitals)
/// rather than a TLS record (0x16). Reads nothing: the TLS handshake sees every byte.
pub async fn is_plain_http(tcp: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answers a plain-HTTP client and closes the connection.
pub async fn refuse(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    tracing::debug!("plain HTTP on the HTTPS port: answered 400 (use https://)");
    let _ = tcp.write_all(ANSWER).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_answer_says_its_length() {
        let text = String::from_utf8_lossy(super::ANSWER);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), declared, "{body:?}");
    }
}
