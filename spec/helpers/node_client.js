// node_client.js PROXY_PORT MODE URL [FILE]: Node's own http module through
// ferry the way axios and similar libraries use it (absolute-form request
// target sent to the proxy, CONNECT for tunnels), for the client specs
// (spec/integration/24_clients_spec.lua).  Prints one JSON line with what
// arrived: status, selected headers, body length and sha256.
//   get URL            GET (absolute-form), keep-alive agent, 3 times
//   post URL FILE      POST FILE with Content-Length
//   chunked URL FILE   POST FILE in 64 KiB writes, Transfer-Encoding: chunked
//   connect URL        CONNECT host:port, then GET over the tunnel
//   ws URL             absolute-form GET with Upgrade: websocket, then echo
'use strict';
const http = require('http');
const net = require('net');
const fs = require('fs');
const crypto = require('crypto');

const [port, mode, target, file] = process.argv.slice(2);
const proxy = { host: '127.0.0.1', port: Number(port) };
const url = new URL(target);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
setTimeout(() => { out({ error: 'timeout' }); process.exit(2); }, 30000).unref();

function out(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
function sha(buf) { return crypto.createHash('sha256').update(buf).digest('hex'); }

function collect(res, done) {
  const parts = [];
  res.on('data', (d) => parts.push(d));
  res.on('end', () => {
    const body = Buffer.concat(parts);
    done({ status: res.statusCode, headers: res.headers, len: body.length, sha256: sha(body),
           text: body.length < 200 ? body.toString('latin1') : undefined });
  });
  res.on('error', (e) => { out({ error: String(e) }); process.exit(1); });
}

function request(opts, body, done) {
  const req = http.request(Object.assign({}, proxy, { agent, path: target,
    headers: { Host: url.host } }, opts), (res) => collect(res, done));
  req.on('error', (e) => { out({ error: String(e) }); process.exit(1); });
  if (typeof body === 'function') body(req); else req.end(body);
  return req;
}

function pick(r, sock) {
  return { status: r.status, len: r.len, sha256: r.sha256, text: r.text, socket: sock,
           via: r.headers.via, rid: r.headers['x-request-id'],
           body_sha: r.headers['x-body-sha256'], conn: r.headers['x-origin-conn'] };
}

if (mode === 'get') {
  const results = [];
  const ports = new Set();
  const next = () => {
    const req = request({ method: 'GET' }, undefined, (r) => {
      results.push(pick(r));
      if (results.length === 3) { out({ results, sockets: ports.size }); agent.destroy(); }
      else next();
    });
    req.on('socket', (s) => s.once('connect', () => ports.add(s.localPort)));
  };
  next();
} else if (mode === 'post') {
  const data = fs.readFileSync(file);
  request({ method: 'POST', headers: { Host: url.host, 'Content-Length': data.length } }, data,
    (r) => { out(pick(r)); agent.destroy(); });
} else if (mode === 'chunked') {
  const data = fs.readFileSync(file);
  request({ method: 'POST' }, (req) => {
    let off = 0;
    const pump = () => {
      while (off < data.length) {
        const piece = data.subarray(off, off + 65536);
        off += piece.length;
        if (!req.write(piece)) { req.once('drain', pump); return; }
      }
      req.end();
    };
    pump();
  }, (r) => { out(pick(r)); agent.destroy(); });
} else if (mode === 'connect') {
  const req = http.request(Object.assign({}, proxy, { method: 'CONNECT', path: url.host,
    headers: { Host: url.host } }));
  req.on('connect', (res, sock, head) => {
    if (res.statusCode !== 200) { out({ connect: res.statusCode }); process.exit(1); }
    const tunneled = http.request({ createConnection: () => sock, path: url.pathname + url.search,
      headers: { Host: url.host, Connection: 'close' } }, (r) => collect(r, (got) => {
        out(Object.assign({ connect: res.statusCode }, pick(got))); sock.destroy();
      }));
    tunneled.end();
  });
  req.on('error', (e) => { out({ error: String(e) }); process.exit(1); });
  req.end();
} else if (mode === 'ws') {
  const key = crypto.randomBytes(16).toString('base64');
  const req = http.request(Object.assign({}, proxy, { path: target, headers: {
    Host: url.host, Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': key } }));
  req.on('response', (res) => { out({ upgrade: false, status: res.statusCode }); process.exit(1); });
  req.on('upgrade', (res, sock, head) => {
    const expect = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
      .digest('base64');
    // Three messages: small text, 70 000-byte binary (64-bit length), 200 KiB binary.
    const msgs = [Buffer.from('hello ferry'), crypto.randomBytes(70000), crypto.randomBytes(204800)];
    const frame = (op, payload) => {
      const n = payload.length;
      const mask = crypto.randomBytes(4);
      let hdr;
      if (n < 126) hdr = Buffer.from([0x80 | op, 0x80 | n]);
      else if (n < 65536) { hdr = Buffer.alloc(4); hdr[0] = 0x80 | op; hdr[1] = 0xfe; hdr.writeUInt16BE(n, 2); }
      else { hdr = Buffer.alloc(10); hdr[0] = 0x80 | op; hdr[1] = 0xff; hdr.writeBigUInt64BE(BigInt(n), 2); }
      const body = Buffer.from(payload);
      for (let i = 0; i < n; i++) body[i] ^= mask[i % 4];
      return Buffer.concat([hdr, mask, body]);
    };
    let buf = head;
    const echoed = [];
    const parse = () => {
      for (;;) {
        if (buf.length < 2) return;
        let n = buf[1] & 0x7f, off = 2;
        if (n === 126) { if (buf.length < 4) return; n = buf.readUInt16BE(2); off = 4; }
        else if (n === 127) { if (buf.length < 10) return; n = Number(buf.readBigUInt64BE(2)); off = 10; }
        if (buf.length < off + n) return;
        const op = buf[0] & 0x0f;
        const payload = buf.subarray(off, off + n);
        buf = buf.subarray(off + n);
        if (op === 8) {
          out({ upgrade: true, status: res.statusCode, accept_ok: res.headers['sec-websocket-accept'] === expect,
                request_line: res.headers['x-ws-request-line'], echoed: echoed.length,
                same: echoed.every((e, i) => sha(e) === sha(msgs[i])) && echoed.length === msgs.length,
                closed: true });
          sock.destroy();
          return;
        }
        echoed.push(Buffer.from(payload));
        if (echoed.length === msgs.length) sock.write(frame(8, Buffer.from([0x03, 0xe8])));
      }
    };
    sock.on('data', (d) => { buf = Buffer.concat([buf, d]); parse(); });
    for (const m of msgs) sock.write(frame(2, m));
    parse();
  });
  req.on('error', (e) => { out({ error: String(e) }); process.exit(1); });
  req.end();
} else {
  out({ error: 'unknown mode ' + mode });
  process.exit(1);
}
