import socket, base64, time, sys, subprocess, json
host, port, cred = '127.0.0.1', int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect((host, port))
s.sendall(f"GET /events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {base64.b64encode(cred.encode()).decode()}\r\n\r\n".encode())
first = s.recv(4096); print(first.decode()[-60:])
# stall while a writer bulk-loads
subprocess.run(sys.argv[3], shell=True)
time.sleep(3)
buf = b''; s.settimeout(10)
try:
    while True:
        d = s.recv(1 << 20)
        if not d: break
        buf += d
except socket.timeout: print('timeout (stream stayed open)')
txt = buf.decode(errors='replace')
ids = [int(l[4:]) for l in txt.split('\n') if l.startswith('id: ')]
print('frames', len(ids), 'first', ids[:2], 'last', ids[-2:])
i = txt.find('event:'); print(txt[i-200:i+300] if i >= 0 else 'NO event: frame')
