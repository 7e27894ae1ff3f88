# A Python workload: connects to HOST_IP:443 (IPv4, IPv6 or IPv4-mapped on
# an AF_INET6 socket), prints what getpeername() says, then makes one HTTPS
# request over that socket with http.client and prints the status and body.
import http.client
import socket
import ssl
import sys

host, ip, family, cafile = sys.argv[1:5]
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
sock = socket.socket(fam, socket.SOCK_STREAM)
sock.connect((ip, 443))
print("peer", sock.getpeername()[0], sock.getpeername()[1])
ctx = ssl.create_default_context(cafile=cafile)
tls = ctx.wrap_socket(sock, server_hostname=host)
conn = http.client.HTTPSConnection(host, 443, context=ctx)
conn.sock = tls
conn.request("GET", "/python")
resp = conn.getresponse()
print("status", resp.status, resp.read().decode())
