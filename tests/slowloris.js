// slowloris.js PORT COUNT ADDR [INTERVAL_MS]: the slowloris attack, for tests/cli_serve_test.sh. Opens
// COUNT connections to 127.0.0.1:PORT from the local address ADDR (any 127.x.y.z is this machine),
// sends a request line, then one more header line every INTERVAL_MS (default 2000) and never ends
// the headers. Every 250 ms prints "connected C open O" (C ever connected, O still open); runs
// until killed.
'use strict';
const net = require('net');
const [port, count, addr, interval] = [+process.argv[2], +process.argv[3], process.argv[4], +(process.argv[5] || 2000)];
let connected = 0, open = 0;
for (let i = 0; i < count; i++) {
    const s = net.connect({port, host: '127.0.0.1', localAddress: addr});
    let timer = null;
    s.on('connect', () => {
        connected++;
        open++;
        s.write('POST /v1/completions HTTP/1.1\r\nHost: peft\r\n');
        let n = 0;
        timer = setInterval(() => s.write(`X-Slow-${n++}: ${'x'.repeat(8)}\r\n`), interval);
    });
    s.on('error', () => {});
    s.on('close', () => {
        if (timer) { clearInterval(timer); open--; }
    });
}
setInterval(() => console.log(`connected ${connected} open ${open}`), 250);
