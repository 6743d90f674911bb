//! Async helpers: read the first CONNECT (sniffing the version), then read and write
//! packets over any tokio `AsyncRead`/`AsyncWrite`.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    CodecError,
    codec::{Codec, sniff_version},
    packet::{Connect, Packet},
};

/// How much free buffer space one read asks for. The buffer holds at most one packet of
/// the codec's maximum size plus this.
const READ_CHUNK: usize = 4096;

/// Reads more bytes into `buf`; `Ok(false)` on end of stream.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<bool, CodecError> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    Ok(reader.read_buf(buf).await? > 0)
}

/// Reads the first packet of a connection, which must be a CONNECT, and returns it with a
/// codec for its version. `Ok(None)`: the peer closed before sending anything. Bytes after
/// the CONNECT stay in `buf` for [`read_packet`].
pub async fn read_connect<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(Codec, Connect)>, CodecError> {
    let version = loop {
        if let Some(v) = sniff_version(buf)? {
            break v;
        }
        if !fill(reader, buf).await? {
            return if buf.is_empty() { Ok(None) } else { Err(CodecError::UnexpectedEof) };
        }
    };
    let codec = Codec::new(version, max_packet_size);
    match read_packet(reader, buf, &codec).await? {
        Some(Packet::Connect(c)) => Ok(Some((codec, c))),
        Some(other) => Err(CodecError::Malformed {
            version,
            reason: format!("expected CONNECT, got {}", other.name()),
        }),
        None => Err(CodecError::UnexpectedEof),
    }
}

/// Reads the next packet. `Ok(None)`: the peer closed the connection between packets.
/// Cancel-safe: bytes already read stay in `buf`.
pub async fn read_packet<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    codec: &Codec,
) -> Result<Option<Packet>, CodecError> {
    loop {
        if let Some(p) = codec.decode(buf)? {
            return Ok(Some(p));
        }
        if !fill(reader, buf).await? {
            return if buf.is_empty() { Ok(None) } else { Err(CodecError::UnexpectedEof) };
        }
    }
}

/// Encodes `packet` and writes it out (flushed).
pub async fn write_packet<W: AsyncWrite + Unpin>(
    writer: &mut W,
    codec: &Codec,
    packet: &Packet,
) -> Result<(), CodecError> {
    let mut out = BytesMut::new();
    codec.encode(packet, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::packet::{Login, Publish, QoS, Version};

    #[tokio::test]
    async fn reads_connect_then_packets_over_a_stream() {
        for v in [Version::V311, Version::V5] {
            let (mut client, mut server) = tokio::io::duplex(64);
            let codec = Codec::new(v, 1024);
            let mut c = Connect::new(v, "c1");
            c.login = Some(Login { username: "d@a".into(), password: "pw".into() });
            let p =
                Packet::Publish(Publish::new("temp", QoS::AtMostOnce, Bytes::from(vec![7u8; 300])));
            let writer = {
                let (c, p) = (c.clone(), p.clone());
                tokio::spawn(async move {
                    write_packet(&mut client, &codec, &Packet::Connect(c)).await.unwrap();
                    write_packet(&mut client, &codec, &p).await.unwrap();
                })
            };
            let mut buf = BytesMut::new();
            let (got_codec, got) =
                read_connect(&mut server, &mut buf, 1024).await.unwrap().unwrap();
            assert_eq!((got_codec, got), (codec, c));
            assert_eq!(read_packet(&mut server, &mut buf, &codec).await.unwrap(), Some(p));
            writer.await.unwrap();
            assert_eq!(read_packet(&mut server, &mut buf, &codec).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn eof_inside_a_packet_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&[0x10, 0x20, 0x00]).await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_connect(&mut server, &mut buf, 1024).await,
            Err(CodecError::UnexpectedEof)
        ));
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        assert!(read_connect(&mut server, &mut BytesMut::new(), 1024).await.unwrap().is_none());
    }
}
