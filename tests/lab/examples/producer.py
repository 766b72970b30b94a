import socket
import time

MCAST_GRP = "224.1.1.1"
MCAST_PORT = 5007
MULTICAST_TTL = 1

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
sock.bind(("0.0.0.0", 0))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)

for i in range(20):
    sock.sendto(b"robot %d" % i, (MCAST_GRP, MCAST_PORT))
    time.sleep(0.1)
