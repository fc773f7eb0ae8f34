//! How two nodes prove the cluster secret to each other and protect every byte after: a Noise
//! `NNpsk0` handshake keyed by the secret, then authenticated encryption of the frame stream.
//!
//! Why Noise with a pre-shared key rather than mutual TLS: the cluster already shares one secret
//! (`cluster.secret`), so operators need no CA or per-node certificates; the handshake is one
//! round trip; both sides contribute a fresh ephemeral key, so a captured connection cannot be
//! replayed (its keys are gone) and past traffic stays secret if the secret leaks later
//! (forward secrecy). Who holds the secret is a member; node ids are claimed inside the
//! encrypted stream (`Hello` / `Welcome`), as before.
//!
//! The exchange, each message a record (`u16` big-endian length, then bytes):
//! 1. dialler → acceptor: Noise message 1 (`psk, e`), empty payload. Proves nothing yet.
//! 2. acceptor → dialler: Noise message 2 (`e, ee`). Its tag proves to the dialler that the
//!    acceptor holds the secret and saw this very message 1 (fresh: it covers the dialler's new
//!    ephemeral key).
//! 3. dialler → acceptor: the first transport record. It opens only under keys that need the
//!    dialler's ephemeral private key and the secret: the acceptor treats the peer as
//!    unauthenticated until it opens, and a replayed message 1 never gets that far.
//!
//! After the handshake every record is sealed with ChaCha20-Poly1305 under a per-direction
//! counter nonce, so a record that is altered, replayed, reordered or not sealed at all fails to
//! open and ends the connection. Randomness is an input (the caller's 32 bytes per handshake), as
//! time is elsewhere in this crate.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};
use thiserror::Error;

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// Bound into the handshake: a peer speaking another protocol or version fails it.
const PROLOGUE: &[u8] = b"switchboard cluster link v2";
/// Largest Noise message (and so record body).
const MAX_RECORD: usize = 65_535;
const TAG: usize = 16;
/// Largest plaintext in one sealed record.
const MAX_PLAIN: usize = MAX_RECORD - TAG;
/// Largest record before the peer proved the secret: handshake messages are 48 bytes, and the
/// first transport record (a `Hello`) well under this.
pub const MAX_PREAUTH_RECORD: usize = 256;

/// Why a link's handshake or a record failed.
#[derive(Debug, Error)]
pub enum SecurityError {
    /// A record announced more bytes than allowed at this stage.
    #[error("record of {0} bytes exceeds the limit of {1}")]
    TooLarge(usize, usize),
    /// The peer does not hold the cluster secret, or the bytes were altered, replayed or not
    /// sealed.
    #[error("record failed authentication (wrong cluster secret, altered, replayed or unsealed)")]
    Unauthentic,
    /// Noise refused a step (a malformed message).
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl From<snow::Error> for SecurityError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => SecurityError::Unauthentic,
            other => SecurityError::Handshake(other.to_string()),
        }
    }
}

/// The Noise pre-shared key for a cluster secret (any length in, 32 bytes out).
fn psk(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"switchboard cluster psk v2");
    h.update(secret);
    h.finalize().into()
}

/// Supplies the caller's entropy as Noise's random source (the ephemeral key is its only draw).
struct Entropy(Option<[u8; 32]>);

impl Random for Entropy {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        match self.0.take() {
            Some(seed) if dest.len() <= seed.len() => {
                dest.copy_from_slice(&seed[..dest.len()]);
                Ok(())
            }
            _ => Err(snow::Error::Rng),
        }
    }
}

struct EntropyResolver([u8; 32]);

impl CryptoResolver for EntropyResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(Entropy(Some(self.0))))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, _: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

fn builder_state(secret: &[u8], entropy: [u8; 32], initiator: bool) -> Result<HandshakeState, SecurityError> {
    let params: NoiseParams = PATTERN.parse().map_err(|e: snow::Error| SecurityError::Handshake(e.to_string()))?;
    let resolver = FallbackResolver::new(Box::new(EntropyResolver(entropy)), Box::new(DefaultResolver));
    let key = psk(secret);
    let b = snow::Builder::with_resolver(params, Box::new(resolver)).prologue(PROLOGUE)?.psk(0, &key)?;
    Ok(if initiator { b.build_initiator()? } else { b.build_responder()? })
}

fn record(body: &[u8], out: &mut Vec<u8>) {
    // Bodies are at most MAX_RECORD, so the length fits.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
}

/// The dialling side's handshake, waiting for message 2.
pub struct Dialler(HandshakeState);

impl Dialler {
    /// Starts a handshake; returns it and the record to send first.
    pub fn start(secret: &[u8], entropy: [u8; 32]) -> Result<(Dialler, Vec<u8>), SecurityError> {
        let mut hs = builder_state(secret, entropy, true)?;
        let mut msg = [0u8; 128];
        let n = hs.write_message(&[], &mut msg)?;
        let mut out = Vec::with_capacity(n + 2);
        record(&msg[..n], &mut out);
        Ok((Dialler(hs), out))
    }

    /// Reads the acceptor's message 2 (one record body). Success proves the acceptor holds the
    /// secret; the link's sealer and opener follow.
    pub fn finish(mut self, body: &[u8]) -> Result<(Sealer, Opener), SecurityError> {
        let mut payload = [0u8; 128];
        // Whatever fails here, the answer did not come from a holder of the secret.
        self.0.read_message(body, &mut payload).map_err(|_| SecurityError::Unauthentic)?;
        split(self.0)
    }
}

/// The accepting side's handshake.
pub struct Acceptor(HandshakeState);

impl Acceptor {
    /// Ready for a dialler's message 1.
    pub fn new(secret: &[u8], entropy: [u8; 32]) -> Result<Acceptor, SecurityError> {
        Ok(Acceptor(builder_state(secret, entropy, false)?))
    }

    /// Reads message 1 (one record body); returns the record to answer with and the link's
    /// sealer and opener. The peer is not authenticated until the opener opens its first record.
    pub fn accept(mut self, body: &[u8]) -> Result<(Vec<u8>, Sealer, Opener), SecurityError> {
        let mut payload = [0u8; 128];
        self.0.read_message(body, &mut payload).map_err(|_| SecurityError::Unauthentic)?;
        let mut msg = [0u8; 128];
        let n = self.0.write_message(&[], &mut msg)?;
        let mut out = Vec::with_capacity(n + 2);
        record(&msg[..n], &mut out);
        let (sealer, opener) = split(self.0)?;
        Ok((out, sealer, opener))
    }
}

fn split(hs: HandshakeState) -> Result<(Sealer, Opener), SecurityError> {
    let state = Arc::new(hs.into_stateless_transport_mode()?);
    Ok((Sealer { state: state.clone(), nonce: 0, buf: Vec::new() }, Opener { state, nonce: 0, records: RecordReader::new(MAX_RECORD), authenticated: false }))
}

/// Seals outgoing bytes into records (one direction of a link; its own counter).
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    buf: Vec<u8>,
}

impl Sealer {
    /// Appends `plain`, sealed as one or more records, to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), SecurityError> {
        self.buf.resize(MAX_RECORD, 0);
        for chunk in plain.chunks(MAX_PLAIN) {
            let n = self.state.write_message(self.nonce, chunk, &mut self.buf)?;
            self.nonce += 1;
            record(&self.buf[..n], out);
        }
        Ok(())
    }
}

/// Opens incoming records into the plaintext byte stream (the other direction).
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
    records: RecordReader,
    authenticated: bool,
}

impl Opener {
    /// Takes bytes as they arrive from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        self.records.push(bytes);
    }

    /// Opens every complete record, appending the plaintext to `out`. Until one record has
    /// opened, records are held to [`MAX_PREAUTH_RECORD`] bytes.
    pub fn open(&mut self, out: &mut Vec<u8>) -> Result<(), SecurityError> {
        loop {
            self.records.max = if self.authenticated { MAX_RECORD } else { MAX_PREAUTH_RECORD };
            let Some(body) = self.records.next_record()? else { return Ok(()) };
            // The plaintext is shorter than the record: open it in place at the end of `out`.
            let start = out.len();
            out.resize(start + body.len(), 0);
            match self.state.read_message(self.nonce, body, &mut out[start..]) {
                Ok(n) => out.truncate(start + n),
                Err(_) => {
                    out.truncate(start);
                    return Err(SecurityError::Unauthentic);
                }
            }
            self.nonce += 1;
            self.authenticated = true;
        }
    }

    /// Whether a record from the peer has opened: it holds the secret and is live.
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }
}

/// Splits a byte stream into records of at most `max` bytes.
#[derive(Debug)]
pub struct RecordReader {
    buf: Vec<u8>,
    /// Where the next record starts (consumed bytes are dropped in bulk, not per record).
    pos: usize,
    max: usize,
}

impl RecordReader {
    /// A reader that refuses records over `max` bytes.
    pub fn new(max: usize) -> Self {
        RecordReader { buf: Vec::new(), pos: 0, max }
    }

    /// Takes bytes as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet taken as records (what followed the handshake).
    pub fn into_rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.pos);
        self.buf
    }

    /// The next complete record's body, if one is buffered.
    pub fn next_record(&mut self) -> Result<Option<&[u8]>, SecurityError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if len > self.max {
            return Err(SecurityError::TooLarge(len, self.max));
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        let start = self.pos + 2;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a cluster secret of some length";

    fn body(rec: &[u8]) -> Vec<u8> {
        let mut r = RecordReader::new(MAX_PREAUTH_RECORD);
        r.push(rec);
        r.next_record().unwrap().unwrap().to_vec()
    }

    /// A full handshake; returns both ends' (sealer, opener).
    type End = (Sealer, Opener);

    fn link(d_secret: &[u8], a_secret: &[u8]) -> Result<(End, End), SecurityError> {
        let (d, m1) = Dialler::start(d_secret, [1; 32])?;
        let (m2, a_seal, a_open) = Acceptor::new(a_secret, [2; 32])?.accept(&body(&m1))?;
        let dial = d.finish(&body(&m2))?;
        Ok((dial, (a_seal, a_open)))
    }

    #[test]
    fn both_ways_after_a_handshake_and_large_frames_split() {
        let ((mut ds, mut dop), (mut as_, mut aop)) = link(SECRET, SECRET).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        ds.seal(b"hello", &mut wire).unwrap();
        ds.seal(&big, &mut wire).unwrap();
        let mut got = Vec::new();
        // Byte by byte: records cut anywhere reassemble.
        for b in wire.chunks(7) {
            aop.push(b);
            aop.open(&mut got).unwrap();
        }
        assert!(aop.authenticated());
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[5..], &big[..]);
        let mut back = Vec::new();
        as_.seal(b"welcome", &mut back).unwrap();
        dop.push(&back);
        let mut got = Vec::new();
        dop.open(&mut got).unwrap();
        assert_eq!(got, b"welcome");
    }

    #[test]
    fn a_wrong_secret_fails_on_both_sides() {
        // The acceptor cannot read message 1 made with another key.
        assert!(matches!(link(b"another secret entirely", SECRET), Err(SecurityError::Unauthentic)));
    }

    #[test]
    fn the_dialler_refuses_an_acceptor_without_the_secret() {
        let (d, _) = Dialler::start(SECRET, [6; 32]).unwrap();
        // What an impostor can send: a well-formed message 2 made without the secret.
        let (_, m1) = Dialler::start(b"the impostor's own secret", [7; 32]).unwrap();
        let (m2, _, _) = Acceptor::new(b"the impostor's own secret", [8; 32]).unwrap().accept(&body(&m1)).unwrap();
        assert!(matches!(d.finish(&body(&m2)), Err(SecurityError::Unauthentic)));
    }

    #[test]
    fn a_replayed_stream_does_not_open() {
        // A whole captured dialler stream, replayed to a fresh acceptor.
        let (d, m1) = Dialler::start(SECRET, [3; 32]).unwrap();
        let (m2, _, _) = Acceptor::new(SECRET, [4; 32]).unwrap().accept(&body(&m1)).unwrap();
        let (mut ds, _) = d.finish(&body(&m2)).unwrap();
        let mut captured = Vec::new();
        ds.seal(b"Hello from node 2", &mut captured).unwrap();
        // The replay: the acceptor answers message 1 again (with a new ephemeral key), but the
        // captured transport record no longer opens.
        let (_, _, mut aop) = Acceptor::new(SECRET, [5; 32]).unwrap().accept(&body(&m1)).unwrap();
        aop.push(&captured);
        assert!(matches!(aop.open(&mut Vec::new()), Err(SecurityError::Unauthentic)));
        assert!(!aop.authenticated());
    }

    #[test]
    fn altered_reordered_and_unsealed_records_fail() {
        let ((mut ds, _), (_, mut aop)) = link(SECRET, SECRET).unwrap();
        let (mut one, mut two) = (Vec::new(), Vec::new());
        ds.seal(b"one", &mut one).unwrap();
        ds.seal(b"two", &mut two).unwrap();
        // Out of order.
        aop.push(&two);
        assert!(aop.open(&mut Vec::new()).is_err());

        let ((mut ds, _), (_, mut aop)) = link(SECRET, SECRET).unwrap();
        let mut rec = Vec::new();
        ds.seal(b"one", &mut rec).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 1;
        aop.push(&rec);
        assert!(aop.open(&mut Vec::new()).is_err());

        // Plain bytes in record form, never sealed.
        let ((_, _), (_, mut aop)) = link(SECRET, SECRET).unwrap();
        let mut plain = Vec::new();
        record(b"{\"Propose\":...} in the clear", &mut plain);
        aop.push(&plain);
        assert!(matches!(aop.open(&mut Vec::new()), Err(SecurityError::Unauthentic)));
    }

    #[test]
    fn large_records_refused_before_authentication() {
        let ((_, _), (_, mut aop)) = link(SECRET, SECRET).unwrap();
        aop.push(&[0xff, 0xff]);
        assert!(matches!(aop.open(&mut Vec::new()), Err(SecurityError::TooLarge(65_535, MAX_PREAUTH_RECORD))));
    }
}
