//! The metrics port's HTTP/1.1, sans-IO: bytes in ([`Exchange::received`]), a request
//! decided ([`Request`]) and its response queued, bytes out ([`Exchange::output`],
//! [`Exchange::wrote`]). The reactor's `reactor/metrics.rs` moves the bytes.
//!
//! It is as small as a scraper allows: one request per connection (every response says
//! `Connection: close`, and the server closes after it; Prometheus opens a connection per
//! scrape anyway), a request head of at most [`MAX_HEAD`] bytes (431 past it), no body (a
//! request with one gets 400), `GET /metrics` (200) and `GET /` (a one-line index, 200);
//! `HEAD` for both; any other path 404, any other method 405, anything that does not parse
//! 400. Parsing is `httparse`'s: incomplete input is not an error, so the answer is the same
//! however the request is split.

use std::fmt;

/// The longest request head accepted (request line and headers): a scraper sends ~200 bytes.
pub(crate) const MAX_HEAD: usize = 8 << 10;

/// Headers looked at at most; a request with more gets 431.
const MAX_HEADERS: usize = 32;

/// What a complete (or hopeless) request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// `GET /metrics` (`head`: HEAD, no body).
    Metrics { head: bool },
    /// `GET /`: the index.
    Index { head: bool },
    /// Another path: 404.
    NotFound,
    /// Another method: 405.
    MethodNotAllowed,
    /// The bytes are not an HTTP/1.x request head, or it has a body: 400.
    Malformed,
    /// The head is larger than [`MAX_HEAD`] or has too many headers: 431.
    TooLarge,
}

impl Request {
    /// Decides from the bytes received so far: `None` while the head is incomplete (and
    /// within bounds).
    pub(crate) fn parse(bytes: &[u8]) -> Option<Request> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(bytes) {
            Ok(httparse::Status::Partial) => {
                // Decided by the length alone, before the rest arrives (the deframer's rule).
                (bytes.len() > MAX_HEAD).then_some(Request::TooLarge)
            }
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => Some(Request::TooLarge),
            Ok(httparse::Status::Complete(_)) => Some(Request::route(&request)),
            Err(httparse::Error::TooManyHeaders) => Some(Request::TooLarge),
            Err(_) => Some(Request::Malformed),
        }
    }

    fn route(request: &httparse::Request<'_, '_>) -> Request {
        let has_body = request.headers.iter().any(|header| {
            (header.name.eq_ignore_ascii_case("content-length") && header.value != b"0")
                || header.name.eq_ignore_ascii_case("transfer-encoding")
        });
        if has_body {
            return Request::Malformed;
        }
        let head = match request.method {
            Some("GET") => false,
            Some("HEAD") => true,
            _ => return Request::MethodNotAllowed,
        };
        // A query string is ignored, as scrapers may add one.
        let path = request.path.unwrap_or("");
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        match path {
            "/metrics" => Request::Metrics { head },
            "/" => Request::Index { head },
            _ => Request::NotFound,
        }
    }
}

/// The text of `GET /`.
const INDEX: &str = "monoreactor: metrics at /metrics\n";

/// One metrics connection's exchange, a state machine fed the bytes read and drained of the
/// bytes to write: reading the request head, then writing the response, then done.
#[derive(Debug)]
pub(crate) struct Exchange {
    phase: Phase,
}

/// Where an exchange is.
#[derive(Debug)]
enum Phase {
    /// Reading the request head: the bytes so far (at most one past [`MAX_HEAD`]).
    Reading(Vec<u8>),
    /// Writing the response: its bytes, and how many have been written.
    Writing { response: Vec<u8>, written: usize },
    /// The response has been written whole; later bytes from the client are ignored.
    Sent,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Reading(_) => "reading",
            Phase::Writing { .. } => "writing",
            Phase::Sent => "sent",
        })
    }
}

impl Default for Exchange {
    fn default() -> Exchange {
        Exchange {
            phase: Phase::Reading(Vec::new()),
        }
    }
}

impl Exchange {
    /// Takes bytes read from the client. Once they decide the request, queues its response
    /// (`metrics` renders the exposition, called only for `GET /metrics`) and returns the
    /// request; after that, bytes are ignored (one request per connection).
    pub(crate) fn received(
        &mut self,
        bytes: &[u8],
        metrics: impl FnOnce() -> String,
    ) -> Option<Request> {
        let Phase::Reading(head) = &mut self.phase else {
            return None;
        };
        // One byte past the bound is enough to know it is too large.
        let room = (MAX_HEAD + 1).saturating_sub(head.len());
        head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let request = Request::parse(head)?;
        self.set_phase(Phase::Writing {
            response: response(request, metrics),
            written: 0,
        });
        Some(request)
    }

    /// Whether the request is decided (its response queued or sent).
    pub(crate) fn decided(&self) -> bool {
        !matches!(self.phase, Phase::Reading(_))
    }

    /// The response bytes not yet written (none before the request is decided).
    pub(crate) fn output(&self) -> &[u8] {
        match &self.phase {
            Phase::Writing { response, written } => &response[*written..],
            Phase::Reading(_) | Phase::Sent => &[],
        }
    }

    /// `n` bytes of [`Exchange::output`] were written.
    pub(crate) fn wrote(&mut self, n: usize) {
        if let Phase::Writing { response, written } = &mut self.phase {
            *written = (*written + n).min(response.len());
            if *written == response.len() {
                self.set_phase(Phase::Sent);
            }
        }
    }

    /// The response has been written whole.
    pub(crate) fn done(&self) -> bool {
        matches!(self.phase, Phase::Sent)
    }

    /// Every phase change goes through here, so a `trace` log shows each one.
    fn set_phase(&mut self, next: Phase) {
        log::trace!("metrics exchange: {} -> {next}", self.phase);
        self.phase = next;
    }
}

/// The whole response to `request`: status line, headers, body (none for HEAD).
fn response(request: Request, metrics: impl FnOnce() -> String) -> Vec<u8> {
    let (status, body, head) = match request {
        Request::Metrics { head } => ("200 OK", metrics(), head),
        Request::Index { head } => ("200 OK", INDEX.to_string(), head),
        Request::NotFound => ("404 Not Found", "not found\n".to_string(), false),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Request::Malformed => ("400 Bad Request", "bad request\n".to_string(), false),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_string(),
            false,
        ),
    };
    let content_type = if matches!(request, Request::Metrics { .. }) {
        // The Prometheus text format, version 0.0.4, which `prometheus-client` writes.
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Prometheus/2.45.0\r\nAccept: text/plain;version=0.0.4\r\n\r\n";

    /// Feeds `request` cut at `cuts`, as reads would deliver it; the decision and at which
    /// piece it came.
    fn feed(request: &[u8], cuts: &[usize]) -> (Option<Request>, usize) {
        let mut exchange = Exchange::default();
        let mut from = 0;
        for (piece, &to) in cuts.iter().chain([request.len()].iter()).enumerate() {
            if let Some(decided) = exchange.received(&request[from..to], String::new) {
                return (Some(decided), piece);
            }
            from = to;
        }
        (None, cuts.len())
    }

    #[test]
    fn every_prefix_of_a_scrape_is_incomplete_and_the_whole_is_metrics() {
        for len in 0..SCRAPE.len() {
            assert_eq!(
                Request::parse(&SCRAPE[..len]),
                None,
                "prefix of {len} bytes"
            );
        }
        assert_eq!(
            Request::parse(SCRAPE),
            Some(Request::Metrics { head: false })
        );
    }

    #[test]
    fn every_split_of_a_scrape_gives_the_same_request_at_its_last_piece() {
        for first in 0..=SCRAPE.len() {
            for second in first..=SCRAPE.len() {
                let (decided, piece) = feed(SCRAPE, &[first, second]);
                assert_eq!(decided, Some(Request::Metrics { head: false }));
                // Decided only once the last byte is in.
                let last_piece = if second < SCRAPE.len() {
                    2
                } else if first < SCRAPE.len() {
                    1
                } else {
                    0
                };
                assert_eq!(piece, last_piece, "split at {first}, {second}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_request() {
        let cuts: Vec<usize> = (1..SCRAPE.len()).collect();
        assert_eq!(
            feed(SCRAPE, &cuts).0,
            Some(Request::Metrics { head: false })
        );
    }

    #[test]
    fn garbage_is_a_bad_request_from_its_first_wrong_byte() {
        assert_eq!(Request::parse(b"\x16\x03\x01"), Some(Request::Malformed));
        assert_eq!(
            Request::parse(b"GET /metrics HTTP/9\r\n"),
            Some(Request::Malformed)
        );
        let garbage = b"GE\x00T / HTTP/1.1\r\n\r\n";
        for cut in 1..garbage.len() {
            assert_eq!(feed(garbage, &[cut]).0, Some(Request::Malformed));
        }
    }

    #[test]
    fn an_oversized_head_is_refused_from_its_length_alone() {
        let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
        huge.resize(MAX_HEAD + 100, b'a');
        assert_eq!(Request::parse(&huge), Some(Request::TooLarge));
        // Fed in pieces, decided as soon as the bound is passed.
        let cuts: Vec<usize> = (1..huge.len() / 1000).map(|i| i * 1000).collect();
        assert_eq!(feed(&huge, &cuts).0, Some(Request::TooLarge));
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS + 1 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(Request::parse(&many), Some(Request::TooLarge));
    }

    #[test]
    fn routes_methods_and_bodies() {
        let parse = |text: &str| Request::parse(text.as_bytes());
        assert_eq!(
            parse("GET / HTTP/1.0\r\n\r\n"),
            Some(Request::Index { head: false })
        );
        assert_eq!(
            parse("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::Metrics { head: true })
        );
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some(Request::Metrics { head: false })
        );
        assert_eq!(
            parse("GET /other HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(
            parse("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::MethodNotAllowed)
        );
        assert_eq!(
            parse("GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n"),
            Some(Request::Malformed)
        );
    }

    #[test]
    fn a_response_is_written_in_pieces_and_says_close() {
        let mut exchange = Exchange::default();
        assert_eq!(exchange.output(), b"", "nothing before the request");
        let request = exchange.received(SCRAPE, || "up 1\n".to_string());
        assert_eq!(request, Some(Request::Metrics { head: false }));
        let text = String::from_utf8(exchange.output().to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nup 1\n"));
        let total = exchange.output().len();
        exchange.wrote(3);
        assert!(!exchange.done());
        assert_eq!(exchange.output().len(), total - 3);
        exchange.wrote(total);
        assert!(exchange.done());
        // Later bytes change nothing.
        assert_eq!(
            exchange.received(b"GET / HTTP/1.1\r\n\r\n", String::new),
            None
        );
        assert_eq!(exchange.output(), b"");
    }

    #[test]
    fn a_head_request_has_no_body() {
        let mut exchange = Exchange::default();
        exchange.received(b"HEAD /metrics HTTP/1.1\r\n\r\n", || "up 1\n".to_string());
        let text = String::from_utf8(exchange.output().to_vec()).unwrap();
        assert!(text.contains("Content-Length: 5\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }
}
