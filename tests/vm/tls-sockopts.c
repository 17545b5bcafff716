/* Socket options at SOL_SOCKET, IPPROTO_TCP, IPPROTO_IP and IPPROTO_IPV6
 * on IPPROTO_TLS sockets (spec/virtio-tls.md 2.6.10, issue 15): ONE table
 * of options runs against a plain TCP socket and an IPPROTO_TLS socket in
 * the same state, and their answers must be identical (return value,
 * errno, value read back) except where the table names the difference the
 * specification decided.
 *
 * States: unconnected; connected client (TCP: to a listener of this
 * program on 127.0.0.1; TLS: to the TLS server at 127.0.0.1:PEER_PORT);
 * accepted (TLS: a child process connects to the TLS listener); listening.
 *
 * tls-sockopts PEER_PORT LISTEN_PORT [PEER_PORT6 LISTEN_PORT6]
 *   PEER_PORT    a TLS server on the host's 127.0.0.1 (openssl s_server)
 *   LISTEN_PORT  the port the TLS listener binds (0.0.0.0); clients reach
 *                it at 127.0.0.1:LISTEN_PORT (in a guest: the host address
 *                the policy maps it to must be 127.0.0.1:LISTEN_PORT)
 *   PEER_PORT6, LISTEN_PORT6: the same on ::1, for AF_INET6 sockets (the
 *                TCP sockets then use ::1 as well)
 * Runs in a vhost-tls guest (virtio_tls.ko) and on a host under
 * LD_PRELOAD=libipprototls.so. Ends with "tls-sockopts: N failure(s)". */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../include/in_tls.h"
#include "check.h"

#define SOL_IP_ 0
#define SOL_SOCKET_ 1
#define SOL_TCP_ 6
#define SOL_IPV6_ 41

enum access { SET, GET };
enum expect {
	SAME,      /* identical: return value, errno, and the value read back */
	SAME_RET,  /* identical return value and errno; the value describes
		    * this very connection (cookies, timers, counters) */
	TLS_ONLY,  /* the TLS socket gives tls_errno (0: success); the TCP
		    * call is not made: a privileged TCP socket would apply
		    * what the policy refuses (repair mode, marks, devices) */
	TLS_VALUE, /* GET: the TLS socket reads tls_value, TCP something else */
	TCP_ONLY_FROM_7, /* SAME before Linux 7; from 7 on the kernel's generic
		    * sk_getsockopt answers it for TCP sockets only (sk_is_tcp)
		    * and EOPNOTSUPP for every other protocol, IPPROTO_TLS's
		    * included: a difference the driver cannot see, since
		    * SOL_SOCKET getsockopt never reaches a protocol */
	ROUTE,     /* GET of the connection's cached route (IP_MTU, IPV6_MTU):
		    * on a connection, each socket reads an MTU or, when the
		    * kernel dropped its cached route at that instant (a route
		    * change anywhere on the host does), ENOTCONN; without a
		    * connection both are ENOTCONN, as SAME */
};

struct option {
	const char *name;
	int level, optname;
	enum access access;
	int len;           /* SET: value length; GET: room */
	const void *value; /* SET: NULL means the int `number` */
	int number;
	enum expect expect;
	int tls_errno;
	int tls_value;
};

static const struct linger linger_1s = { 1, 1 };
static const struct timeval half_second = { 0, 500000 };
static const char zeros[64];
static const char device_lo[] = "lo";
static const char reno[] = "reno";
static const char tls_ulp[] = "tls";
static const unsigned char ip_options[] = { 1, 1, 1, 0 }; /* NOPs, end */
static const unsigned char membership[8] = { 224, 0, 0, 1, 127, 0, 0, 1 };

#define INT_SET(n, l, o, v, e) { #n, l, o, SET, 4, NULL, v, e, 0, 0 }
#define INT_GET(n, l, o, e) { #n, l, o, GET, 4, NULL, 0, e, 0, 0 }
#define REFUSED(n, l, o, len, val) { #n, l, o, SET, len, val, 1, TLS_ONLY, EPERM, 0 }
#define INT_REFUSED(n, l, o, v) { #n, l, o, SET, 4, NULL, v, TLS_ONLY, EPERM, 0 }

static const struct option table[] = {
	/* IPPROTO_TCP: applied to the host connection. */
	INT_SET(TCP_NODELAY, SOL_TCP_, 1, 1, SAME),
	INT_SET(TCP_MAXSEG, SOL_TCP_, 2, 1200, SAME_RET),
	INT_SET(TCP_CORK, SOL_TCP_, 3, 1, SAME),
	INT_SET(TCP_CORK off, SOL_TCP_, 3, 0, SAME),
	INT_SET(TCP_KEEPIDLE, SOL_TCP_, 4, 30, SAME),
	INT_SET(TCP_KEEPINTVL, SOL_TCP_, 5, 7, SAME),
	INT_SET(TCP_KEEPCNT, SOL_TCP_, 6, 4, SAME),
	INT_SET(TCP_SYNCNT, SOL_TCP_, 7, 3, SAME),
	INT_SET(TCP_LINGER2, SOL_TCP_, 8, 10, SAME),
	INT_SET(TCP_DEFER_ACCEPT, SOL_TCP_, 9, 5, SAME),
	INT_SET(TCP_WINDOW_CLAMP, SOL_TCP_, 10, 40000, SAME_RET),
	INT_SET(TCP_QUICKACK, SOL_TCP_, 12, 1, SAME_RET),
	INT_SET(TCP_THIN_LINEAR_TIMEOUTS, SOL_TCP_, 16, 1, SAME),
	INT_SET(TCP_THIN_DUPACK, SOL_TCP_, 17, 1, SAME_RET),
	INT_SET(TCP_USER_TIMEOUT, SOL_TCP_, 18, 10000, SAME),
	INT_SET(TCP_FASTOPEN, SOL_TCP_, 23, 5, SAME),
	INT_SET(TCP_NOTSENT_LOWAT, SOL_TCP_, 25, 16384, SAME),
	INT_SET(TCP_SAVE_SYN, SOL_TCP_, 27, 1, SAME),
	{ "TCP_FASTOPEN_CONNECT", SOL_TCP_, 30, SET, 4, NULL, 1, TLS_ONLY, EOPNOTSUPP, 0 },
	INT_SET(TCP_FASTOPEN_NO_COOKIE, SOL_TCP_, 34, 0, SAME),
	{ "TCP_INFO", SOL_TCP_, 11, GET, 232, NULL, 0, SAME_RET, 0, 0 },
	INT_SET(TCP_INFO (set), SOL_TCP_, 11, 1, SAME_RET),
	{ "TCP_CC_INFO", SOL_TCP_, 26, GET, 64, NULL, 0, SAME_RET, 0, 0 },
	{ "TCP_SAVED_SYN", SOL_TCP_, 28, GET, 64, NULL, 0, SAME, 0, 0 },
	INT_GET(TCP_IS_MPTCP, SOL_TCP_, 43, SAME),
	INT_GET(TCP_TIMESTAMP, SOL_TCP_, 24, SAME_RET),
	{ "TCP_CONGESTION (get)", SOL_TCP_, 13, GET, 16, NULL, 0, SAME_RET, 0, 0 },
	/* Bad values and lengths: Linux's EINVAL, from the host. */
	{ "TCP_NODELAY, 2 bytes", SOL_TCP_, 1, SET, 2, zeros, 0, SAME, 0, 0 },
	INT_SET(TCP_KEEPIDLE 0, SOL_TCP_, 4, 0, SAME),
	INT_SET(TCP_KEEPCNT 200, SOL_TCP_, 6, 200, SAME),
	INT_SET(TCP_MAXSEG 10, SOL_TCP_, 2, 10, SAME_RET),
	INT_SET(TCP_USER_TIMEOUT -1, SOL_TCP_, 18, -1, SAME),
	/* Refused by the policy. */
	{ "TCP_CONGESTION (set)", SOL_TCP_, 13, SET, 4, reno, 0, TLS_ONLY, EPERM, 0 },
	REFUSED(TCP_MD5SIG, SOL_TCP_, 14, 64, zeros),
	INT_REFUSED(TCP_REPAIR, SOL_TCP_, 19, 1),
	REFUSED(TCP_ULP, SOL_TCP_, 31, 3, tls_ulp),
	REFUSED(TCP_FASTOPEN_KEY, SOL_TCP_, 33, 16, zeros),
	INT_REFUSED(TCP_TX_DELAY, SOL_TCP_, 37, 10),
	REFUSED(TCP_AO_ADD_KEY, SOL_TCP_, 38, 64, zeros),
	INT_REFUSED(TCP_TIMESTAMP (set), SOL_TCP_, 24, 1),
	/* Decided differences: not on the TLS stream. */
	{ "TCP_INQ", SOL_TCP_, 36, SET, 4, NULL, 1, TLS_ONLY, EOPNOTSUPP, 0 },
	{ "TCP_ZEROCOPY_RECEIVE", SOL_TCP_, 35, GET, 64, NULL, 0, TLS_ONLY, EOPNOTSUPP, 0 },
	/* Unknown numbers. */
	INT_SET(TCP option 99, SOL_TCP_, 99, 1, SAME),
	INT_GET(TCP option 99 (get), SOL_TCP_, 99, SAME),

	/* IPPROTO_IP. */
	INT_SET(IP_TOS, SOL_IP_, 1, 0x10, SAME),
	{ "IP_TOS, 1 byte", SOL_IP_, 1, SET, 1, "\x08", 0, SAME, 0, 0 },
	INT_SET(IP_TTL, SOL_IP_, 2, 33, SAME),
	INT_SET(IP_TTL 0, SOL_IP_, 2, 0, SAME),
	INT_SET(IP_HDRINCL, SOL_IP_, 3, 1, SAME),
	INT_SET(IP_ROUTER_ALERT, SOL_IP_, 5, 1, SAME),
	INT_SET(IP_RECVOPTS, SOL_IP_, 6, 1, SAME),
	INT_SET(IP_RETOPTS, SOL_IP_, 7, 1, SAME),
	INT_SET(IP_PKTINFO, SOL_IP_, 8, 1, SAME),
	{ "IP_PKTOPTIONS", SOL_IP_, 9, GET, 64, NULL, 0, SAME, 0, 0 },
	INT_SET(IP_MTU_DISCOVER, SOL_IP_, 10, 2, SAME),
	INT_SET(IP_RECVERR, SOL_IP_, 11, 1, SAME),
	INT_SET(IP_RECVTTL, SOL_IP_, 12, 1, SAME),
	INT_SET(IP_RECVTOS, SOL_IP_, 13, 1, SAME),
	INT_GET(IP_MTU, SOL_IP_, 14, ROUTE),
	INT_SET(IP_PASSSEC, SOL_IP_, 18, 1, SAME),
	INT_SET(IP_RECVORIGDSTADDR, SOL_IP_, 20, 1, SAME),
	INT_SET(IP_MINTTL, SOL_IP_, 21, 1, SAME),
	INT_SET(IP_NODEFRAG, SOL_IP_, 22, 1, SAME),
	INT_SET(IP_CHECKSUM, SOL_IP_, 23, 1, SAME),
	INT_SET(IP_BIND_ADDRESS_NO_PORT, SOL_IP_, 24, 1, SAME),
	INT_SET(IP_RECVFRAGSIZE, SOL_IP_, 25, 1, SAME),
	INT_SET(IP_RECVERR_RFC4884, SOL_IP_, 26, 1, SAME),
	INT_SET(IP_MULTICAST_TTL, SOL_IP_, 33, 3, SAME),
	INT_SET(IP_MULTICAST_LOOP, SOL_IP_, 34, 0, SAME),
	INT_SET(IP_MULTICAST_ALL, SOL_IP_, 49, 0, SAME),
	INT_SET(IP_LOCAL_PORT_RANGE, SOL_IP_, 51, 0, SAME),
	{ "IP_OPTIONS (get)", SOL_IP_, 4, GET, 40, NULL, 0, SAME, 0, 0 },
	{ "IP_PROTOCOL", SOL_IP_, 52, GET, 4, NULL, 0, TLS_VALUE, 0, IPPROTO_TLS },
	REFUSED(IP_OPTIONS, SOL_IP_, 4, 4, ip_options),
	INT_REFUSED(IP_FREEBIND, SOL_IP_, 15, 1),
	INT_REFUSED(IP_TRANSPARENT, SOL_IP_, 19, 1),
	REFUSED(IP_IPSEC_POLICY, SOL_IP_, 16, 64, zeros),
	REFUSED(IP_MULTICAST_IF, SOL_IP_, 32, 4, zeros),
	INT_REFUSED(IP_UNICAST_IF, SOL_IP_, 50, 1),
	REFUSED(IP_ADD_MEMBERSHIP, SOL_IP_, 35, 8, membership),
	REFUSED(MCAST_JOIN_GROUP, SOL_IP_, 42, 64, zeros),
	{ "netfilter IPT_SO_GET_INFO", SOL_IP_, 64, GET, 64, NULL, 0, TLS_ONLY, EPERM, 0 },
	INT_SET(IP option 27, SOL_IP_, 27, 1, SAME),
	INT_GET(IP option 27 (get), SOL_IP_, 27, SAME),
	/* IPPROTO_IPV6 (more in ipv6_table). On AF_INET sockets: ENOPROTOOPT
	 * to set, EOPNOTSUPP to read (Linux's ip_getsockopt), for both. */
	INT_SET(IPV6_V6ONLY, SOL_IPV6_, 26, 1, SAME),
	INT_SET(IPV6_TCLASS, SOL_IPV6_, 67, 8, SAME),
	INT_GET(IPV6_MTU, SOL_IPV6_, 24, ROUTE),
	/* Another level altogether. */
	INT_SET(level 200, 200, 1, 1, SAME),

	/* SOL_SOCKET, applied to the host connection. */
	INT_SET(SO_REUSEADDR, SOL_SOCKET_, 2, 1, SAME),
	INT_SET(SO_DONTROUTE, SOL_SOCKET_, 5, 1, SAME),
	INT_SET(SO_KEEPALIVE, SOL_SOCKET_, 9, 1, SAME),
	{ "SO_KEEPALIVE, 2 bytes", SOL_SOCKET_, 9, SET, 2, zeros, 0, SAME, 0, 0 },
	INT_SET(SO_PRIORITY, SOL_SOCKET_, 12, 3, SAME),
	{ "SO_LINGER", SOL_SOCKET_, 13, SET, sizeof(struct linger), &linger_1s, 0, SAME, 0, 0 },
	{ "SO_LINGER, 4 bytes", SOL_SOCKET_, 13, SET, 4, &linger_1s, 0, SAME, 0, 0 },
	INT_SET(SO_REUSEPORT, SOL_SOCKET_, 15, 1, SAME),
	INT_SET(SO_MAX_PACING_RATE, SOL_SOCKET_, 47, 1000000, SAME),
	/* SOL_SOCKET, refused. */
	INT_REFUSED(SO_PRIORITY 7, SOL_SOCKET_, 12, 7),
	REFUSED(SO_BINDTODEVICE, SOL_SOCKET_, 25, 3, device_lo),
	INT_REFUSED(SO_BINDTOIFINDEX, SOL_SOCKET_, 62, 1),
	INT_REFUSED(SO_MARK, SOL_SOCKET_, 36, 1),
	REFUSED(SO_ATTACH_REUSEPORT_CBPF, SOL_SOCKET_, 51, 16, zeros),
	/* SOL_SOCKET, the socket's own state. */
	INT_SET(SO_DEBUG, SOL_SOCKET_, 1, 1, SAME),
	INT_SET(SO_BROADCAST, SOL_SOCKET_, 6, 1, SAME),
	INT_SET(SO_SNDBUF, SOL_SOCKET_, 7, 65536, SAME),
	INT_SET(SO_RCVBUF, SOL_SOCKET_, 8, 65536, SAME),
	{ "SO_RCVBUF, 2 bytes", SOL_SOCKET_, 8, SET, 2, zeros, 0, SAME, 0, 0 },
	INT_SET(SO_RCVBUFFORCE, SOL_SOCKET_, 33, 65536, SAME),
	INT_SET(SO_OOBINLINE, SOL_SOCKET_, 10, 1, SAME),
	INT_SET(SO_NO_CHECK, SOL_SOCKET_, 11, 1, SAME),
	INT_SET(SO_PASSCRED, SOL_SOCKET_, 16, 1, SAME),
	INT_SET(SO_RCVLOWAT, SOL_SOCKET_, 18, 10, SAME),
	INT_SET(SO_SNDLOWAT, SOL_SOCKET_, 19, 10, SAME),
	{ "SO_RCVTIMEO", SOL_SOCKET_, 20, SET, sizeof(struct timeval), &half_second, 0, SAME, 0, 0 },
	{ "SO_SNDTIMEO", SOL_SOCKET_, 21, SET, sizeof(struct timeval), &half_second, 0, SAME, 0, 0 },
	INT_SET(SO_TIMESTAMP, SOL_SOCKET_, 29, 1, SAME),
	INT_SET(SO_TIMESTAMPNS, SOL_SOCKET_, 35, 1, SAME),
	INT_SET(SO_BUSY_POLL, SOL_SOCKET_, 46, 0, SAME),
	INT_SET(SO_SELECT_ERR_QUEUE, SOL_SOCKET_, 45, 1, SAME),
	INT_SET(SO_BUF_LOCK, SOL_SOCKET_, 72, 3, SAME),
	INT_SET(SO_RCVMARK, SOL_SOCKET_, 75, 1, SAME),
	INT_GET(SO_ERROR, SOL_SOCKET_, 4, SAME),
	INT_GET(SO_TYPE, SOL_SOCKET_, 3, SAME),
	INT_GET(SO_DOMAIN, SOL_SOCKET_, 39, SAME),
	INT_GET(SO_ACCEPTCONN, SOL_SOCKET_, 30, SAME),
	INT_GET(SO_TXREHASH, SOL_SOCKET_, 74, TCP_ONLY_FROM_7),
	{ "SO_PROTOCOL", SOL_SOCKET_, 38, GET, 4, NULL, 0, TLS_VALUE, 0, IPPROTO_TLS },
	{ "SO_PEERCRED", SOL_SOCKET_, 17, GET, 12, NULL, 0, SAME_RET, 0, 0 },
	{ "SO_PEERNAME", SOL_SOCKET_, 28, GET, 128, NULL, 0, SAME_RET, 0, 0 },
	{ "SO_COOKIE", SOL_SOCKET_, 57, GET, 8, NULL, 0, SAME_RET, 0, 0 },
	{ "SO_MEMINFO", SOL_SOCKET_, 55, GET, 36, NULL, 0, SAME_RET, 0, 0 },
	INT_GET(SO_INCOMING_CPU, SOL_SOCKET_, 49, SAME_RET),
	/* Decided differences (MSG_ZEROCOPY, peek offsets). */
	{ "SO_ZEROCOPY", SOL_SOCKET_, 60, SET, 4, NULL, 1, TLS_ONLY, EOPNOTSUPP, 0 },
	{ "SO_PEEK_OFF", SOL_SOCKET_, 42, SET, 4, NULL, 0, TLS_ONLY, EOPNOTSUPP, 0 },
	INT_SET(SOL_SOCKET option 999, SOL_SOCKET_, 999, 1, SAME),
};

/* IPPROTO_IPV6 options. On AF_INET sockets every one must answer as on
 * TCP (ENOPROTOOPT, EOPNOTSUPP), whatever `expect` says for AF_INET6. */
static const struct option ipv6_table[] = {
	INT_SET(IPV6_UNICAST_HOPS, SOL_IPV6_, 16, 33, SAME),
	INT_SET(IPV6_MULTICAST_HOPS, SOL_IPV6_, 18, 3, SAME),
	INT_SET(IPV6_MULTICAST_LOOP, SOL_IPV6_, 19, 0, SAME),
	INT_SET(IPV6_MTU_DISCOVER, SOL_IPV6_, 23, 2, SAME),
	INT_SET(IPV6_RECVERR, SOL_IPV6_, 25, 1, SAME),
	INT_SET(IPV6_MULTICAST_ALL, SOL_IPV6_, 29, 0, SAME),
	INT_SET(IPV6_FLOWINFO_SEND, SOL_IPV6_, 33, 1, SAME),
	INT_SET(IPV6_RECVPKTINFO, SOL_IPV6_, 49, 1, SAME),
	INT_SET(IPV6_RECVHOPLIMIT, SOL_IPV6_, 51, 1, SAME),
	INT_SET(IPV6_RECVTCLASS, SOL_IPV6_, 66, 1, SAME),
	INT_SET(IPV6_DONTFRAG, SOL_IPV6_, 62, 1, SAME),
	INT_SET(IPV6_AUTOFLOWLABEL, SOL_IPV6_, 70, 0, SAME),
	INT_SET(IPV6_ADDR_PREFERENCES, SOL_IPV6_, 72, 2, SAME),
	INT_SET(IPV6_MINHOPCOUNT, SOL_IPV6_, 73, 1, SAME),
	INT_SET(IPV6_CHECKSUM, SOL_IPV6_, 7, 1, SAME),
	INT_SET(IPV6_HDRINCL, SOL_IPV6_, 36, 1, SAME),
	INT_GET(IPV6_PATHMTU, SOL_IPV6_, 61, SAME_RET),
	INT_GET(IPV6_HOPLIMIT, SOL_IPV6_, 52, SAME),
	INT_SET(IPV6 option 99, SOL_IPV6_, 99, 1, SAME),
	INT_GET(IPV6 option 99 (get), SOL_IPV6_, 99, SAME),
	{ "IPV6_ADDRFORM", SOL_IPV6_, 1, SET, 4, NULL, AF_INET, TLS_ONLY, EOPNOTSUPP, 0 },
	REFUSED(IPV6_RTHDR, SOL_IPV6_, 57, 8, zeros),
	REFUSED(IPV6_HOPOPTS, SOL_IPV6_, 54, 8, zeros),
	REFUSED(IPV6_PKTINFO, SOL_IPV6_, 50, 20, zeros),
	REFUSED(IPV6_NEXTHOP, SOL_IPV6_, 9, 28, zeros),
	INT_REFUSED(IPV6_TRANSPARENT, SOL_IPV6_, 75, 1),
	INT_REFUSED(IPV6_FREEBIND, SOL_IPV6_, 78, 1),
	INT_REFUSED(IPV6_UNICAST_IF, SOL_IPV6_, 76, 1),
	INT_REFUSED(IPV6_MULTICAST_IF, SOL_IPV6_, 17, 1),
	REFUSED(IPV6_JOIN_ANYCAST, SOL_IPV6_, 27, 20, zeros),
	REFUSED(IPV6_ADD_MEMBERSHIP, SOL_IPV6_, 20, 20, zeros),
	REFUSED(IPV6_FLOWLABEL_MGR, SOL_IPV6_, 32, 32, zeros),
	REFUSED(IPV6_XFRM_POLICY, SOL_IPV6_, 35, 64, zeros),
	{ "netfilter IP6T_SO_GET_INFO", SOL_IPV6_, 64, GET, 64, NULL, 0, TLS_ONLY, EPERM, 0 },
};

/* One answer: return value, errno, the bytes read back (GET, or after a
 * successful SET), and how the read-back went. */
struct answer {
	int ret, err;
	unsigned char value[256];
	socklen_t len;
	int get_ret, get_err;
};

static void ask(int fd, const struct option *o, struct answer *a)
{
	int number = o->number;
	const void *value = o->value ? o->value : &number;

	memset(a, 0, sizeof(*a));
	errno = 0;
	if (o->access == SET) {
		a->ret = setsockopt(fd, o->level, o->optname, value, o->len);
		a->err = a->ret ? errno : 0;
		a->len = o->len > 0 ? (socklen_t)o->len : 4;
		errno = 0;
		a->get_ret = getsockopt(fd, o->level, o->optname, a->value, &a->len);
		a->get_err = a->get_ret ? errno : 0;
	} else {
		a->len = o->len;
		a->ret = getsockopt(fd, o->level, o->optname, a->value, &a->len);
		a->err = a->ret ? errno : 0;
		a->get_ret = a->ret;
		a->get_err = a->err;
	}
}

static void describe(const char *who, const struct answer *a)
{
	printf("    %s: %d%s%s, read back %d (%s) %u bytes", who, a->ret, a->ret ? " " : "",
	       a->ret ? strerror(a->err) : "", a->get_ret, a->get_ret ? strerror(a->get_err) : "ok", (unsigned)a->len);
	for (socklen_t i = 0; i < a->len && i < 16; i++)
		printf(" %02x", a->value[i]);
	printf("\n");
}

/* A read of the cached route's MTU: a value, or ENOTCONN without a route. */
static int route_answer(const struct answer *a)
{
	return a->get_ret == 0 ? a->len == 4 && *(const int *)a->value > 0 : a->get_err == ENOTCONN;
}

/* The running kernel's major version (uname). */
static int kernel_major(void)
{
	struct utsname name;
	return uname(&name) == 0 ? atoi(name.release) : 0;
}

static void run_options(const char *state, int family, int connection, int tcp, int tls, const struct option *options,
			size_t count)
{
	char what[200];

	for (size_t i = 0; i < count; i++) {
		const struct option *o = &options[i];
		struct answer t = { 0 }, s;
		/* An AF_INET socket has no IPPROTO_IPV6 option: as TCP, always. */
		enum expect expect = family == AF_INET && o->level == SOL_IPV6_ ? SAME : o->expect;
		if (expect == ROUTE && !connection)
			expect = SAME;
		if (expect == TCP_ONLY_FROM_7 && kernel_major() < 7)
			expect = SAME;
		int ok;

		ask(tls, o, &s);
		switch (expect) {
		case TLS_ONLY:
			ok = o->tls_errno ? (s.ret == -1 && s.err == o->tls_errno) : s.ret == 0;
			snprintf(what, sizeof(what), "%s: %s on the TLS socket: %s", state, o->name,
				 o->tls_errno ? strerror(o->tls_errno) : "succeeds");
			break;
		case TCP_ONLY_FROM_7:
			ask(tcp, o, &t);
			ok = s.ret == -1 && s.err == EOPNOTSUPP && t.ret == 0;
			snprintf(what, sizeof(what), "%s: %s: EOPNOTSUPP on the TLS socket, 0 on TCP (Linux 7's sk_is_tcp)", state,
				 o->name);
			break;
		case ROUTE:
			ask(tcp, o, &t);
			ok = route_answer(&s) && route_answer(&t);
			snprintf(what, sizeof(what), "%s: %s reads the route's MTU or ENOTCONN, as on TCP", state, o->name);
			break;
		case TLS_VALUE:
			ask(tcp, o, &t);
			ok = s.ret == 0 && t.ret == 0 && s.len == 4 && *(int *)s.value == o->tls_value;
			snprintf(what, sizeof(what), "%s: %s on the TLS socket reads %d (TCP: %d)", state, o->name, o->tls_value,
				 *(int *)t.value);
			break;
		default:
			ask(tcp, o, &t);
			ok = s.ret == t.ret && s.err == t.err && s.get_ret == t.get_ret && s.get_err == t.get_err;
			if (ok && expect == SAME && s.get_ret == 0)
				ok = s.len == t.len && memcmp(s.value, t.value, s.len) == 0;
			snprintf(what, sizeof(what), "%s: %s as on TCP (%s%s)", state, o->name, s.ret ? strerror(s.err) : "0",
				 expect == SAME_RET ? ", any value" : "");
			break;
		}
		errno = 0;
		check(ok, what);
		if (!ok) {
			if (expect != TLS_ONLY)
				describe("TCP", &t);
			describe("TLS", &s);
		}
	}
}

static void run_table(const char *state, int family, int connection, int tcp, int tls)
{
	char label[64];

	snprintf(label, sizeof(label), "%s %s", family == AF_INET ? "IPv4" : "IPv6", state);
	run_options(label, family, connection, tcp, tls, table, sizeof(table) / sizeof(table[0]));
	run_options(label, family, connection, tcp, tls, ipv6_table, sizeof(ipv6_table) / sizeof(ipv6_table[0]));
}

/* The loopback address of `family` (the wildcard one for a TLS listener,
 * whose host address the policy decides) and `port`. */
static socklen_t loopback(int family, int port, int wildcard, struct sockaddr_storage *storage)
{
	memset(storage, 0, sizeof(*storage));
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)storage;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		in->sin_addr.s_addr = htonl(wildcard ? INADDR_ANY : INADDR_LOOPBACK);
		return sizeof(*in);
	}
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)storage;
	in6->sin6_family = AF_INET6;
	in6->sin6_port = htons(port);
	in6->sin6_addr = wildcard ? in6addr_any : in6addr_loopback;
	return sizeof(*in6);
}

static int listening(int family, int protocol, int port)
{
	struct sockaddr_storage addr;
	socklen_t len = loopback(family, port, protocol == IPPROTO_TLS, &addr);
	int fd = socket(family, SOCK_STREAM, protocol);
	int on = 1;

	/* Before bind: a port of an earlier run may be in TIME_WAIT. */
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) ||
	    bind(fd, (struct sockaddr *)&addr, len) || listen(fd, 8)) {
		check(0, protocol == IPPROTO_TLS ? "a TLS listener" : "a TCP listener");
		exit(1);
	}
	return fd;
}

static int port_of(int fd)
{
	struct sockaddr_storage addr;
	socklen_t len = sizeof(addr);

	getsockname(fd, (struct sockaddr *)&addr, &len);
	/* sin_port and sin6_port are at the same offset. */
	return ntohs(((struct sockaddr_in *)&addr)->sin_port);
}

static int connected(int family, int protocol, int port)
{
	struct sockaddr_storage addr;
	socklen_t len = loopback(family, port, 0, &addr);
	int fd = socket(family, SOCK_STREAM, protocol);

	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, len)) {
		check(0, protocol == IPPROTO_TLS ? "a TLS connection" : "a TCP connection");
		exit(1);
	}
	return fd;
}

/* The four states for sockets of `family`. */
static void run_states(int family, int peer_port, int listen_port)
{
	int tcp_listener, tcp, tls, tcp_peer, tls_listener, status;
	pid_t child;

	/* Unconnected. */
	tcp = socket(family, SOCK_STREAM, IPPROTO_TCP);
	tls = socket(family, SOCK_STREAM, IPPROTO_TLS);
	check(tcp >= 0 && tls >= 0, "a TCP and a TLS socket");
	run_table("unconnected", family, 0, tcp, tls);
	close(tcp);
	close(tls);

	/* Connected clients. */
	tcp_listener = listening(family, IPPROTO_TCP, 0);
	tcp = connected(family, IPPROTO_TCP, port_of(tcp_listener));
	tcp_peer = accept(tcp_listener, NULL, NULL);
	tls = connected(family, IPPROTO_TLS, peer_port);
	run_table("connected", family, 1, tcp, tls);
	close(tcp);
	close(tcp_peer);
	close(tls);

	/* Accepted: TCP from this program's client, TLS from a child's. */
	tcp_peer = connected(family, IPPROTO_TCP, port_of(tcp_listener));
	tcp = accept(tcp_listener, NULL, NULL);
	tls_listener = listening(family, IPPROTO_TLS, listen_port);
	child = fork();
	if (child == 0) {
		char byte;
		int fd = connected(family, IPPROTO_TLS, listen_port);

		while (read(fd, &byte, 1) > 0)
			;
		_exit(0);
	}
	tls = accept(tls_listener, NULL, NULL);
	check(tcp >= 0 && tls >= 0, "accepted a TCP and a TLS connection");
	run_table("accepted", family, 1, tcp, tls);
	close(tcp);
	close(tls);
	close(tcp_peer);
	check(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the TLS client saw the accepted socket close");

	/* Listening. */
	run_table("listening", family, 0, tcp_listener, tls_listener);
	close(tcp_listener);
	close(tls_listener);
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 5) {
		fprintf(stderr, "usage: %s PEER_PORT LISTEN_PORT [PEER_PORT6 LISTEN_PORT6]\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	run_states(AF_INET, atoi(argv[1]), atoi(argv[2]));
	if (argc == 5)
		run_states(AF_INET6, atoi(argv[3]), atoi(argv[4]));
	printf("tls-sockopts: %d failure(s)\n", failures);
	return failures != 0;
}
