/* Guest-side client checks through virtio_tls.ko, written as an
 * application would against in_tls.h: connect by address and by host name,
 * read what the handshake chose, and the errors SSA's tests expect.
 * usage: tls-connect PORT PORT6   (TLS servers for "localhost" on the
 * host's 127.0.0.1 and ::1) */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>
#include "../../include/in_tls.h"
#include "check.h"


static void on_alarm(int signal)
{
	(void)signal;
}

static int tls_socket(const char *hostname)
{
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (fd >= 0 && hostname)
		setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, hostname, strlen(hostname) + 1);
	return fd;
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	int port = atoi(argv[1]);
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);

	int fd = tls_socket("localhost");
	check(fd >= 0, "socket + TLS_HOSTNAME");
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, "connect to 127.0.0.1 verified as localhost");
	int version = 0;
	socklen_t len = sizeof(version);
	check(getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_VERSION, &version, &len) == 0 && version == TLS_1_3,
	      "TLS_CHOSEN_VERSION is TLS_1_3");
	char text[256];
	len = sizeof(text);
	check(getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_CIPHER, text, &len) == 0 && strncmp(text, "TLS_", 4) == 0,
	      "TLS_CHOSEN_CIPHER");
	printf("cipher: %s\n", text);
	len = sizeof(text);
	check(getsockopt(fd, IPPROTO_TLS, TLS_PEER_IDENTITY, text, &len) == 0 && strstr(text, "CN=localhost"),
	      "TLS_PEER_IDENTITY");
	printf("peer: %s\n", text);
	errno = 0;
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0 && errno == EISCONN, "a second connect is EISCONN");
	errno = 0;
	check(setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "x.test", 7) < 0 && errno == EISCONN,
	      "TLS_HOSTNAME after connect is EISCONN");
	errno = 0;
	check(bind(fd, (struct sockaddr *)&in, sizeof(in)) < 0 && errno == EINVAL, "bind after connect is EINVAL");
	errno = 0;
	check(listen(fd, 1) < 0 && errno == EOPNOTSUPP, "listen after connect is EOPNOTSUPP (as SSA's tests expect)");
	/* The server waits for a request: a blocking read waits until a
	 * signal interrupts it, as on a TCP socket. */
	struct sigaction action = { .sa_handler = on_alarm };
	sigaction(SIGALRM, &action, NULL);
	alarm(1);
	char byte;
	errno = 0;
	check(read(fd, &byte, 1) < 0 && errno == EINTR, "a signal interrupts a blocking read (EINTR)");
	errno = 0;
	check(recv(fd, &byte, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "MSG_DONTWAIT with nothing to read is EAGAIN");
	struct timeval tv = { .tv_usec = 300000 };
	check(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) == 0, "SO_RCVTIMEO 300 ms");
	errno = 0;
	check(read(fd, &byte, 1) < 0 && errno == EAGAIN, "a read past SO_RCVTIMEO is EAGAIN");
	tv = (struct timeval){ .tv_sec = 30 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/* sendmsg/recvmsg with iovecs, MSG_PEEK, TLS_ID. */
	char part1[] = "GET / HTTP/1.0\r\n", part2[] = "\r\n";
	struct iovec out[2] = { { part1, strlen(part1) }, { part2, 2 } };
	struct msghdr message = { .msg_iov = out, .msg_iovlen = 2 };
	check(sendmsg(fd, &message, 0) == (ssize_t)(strlen(part1) + 2), "sendmsg with two iovecs");
	char head[4];
	check(recv(fd, head, 4, MSG_PEEK) == 4 && memcmp(head, "HTTP", 4) == 0, "MSG_PEEK sees the reply");
	memset(head, 0, sizeof(head));
	struct iovec in_iov = { head, 4 };
	struct msghdr incoming = { .msg_iov = &in_iov, .msg_iovlen = 1 };
	check(recvmsg(fd, &incoming, 0) == 4 && memcmp(head, "HTTP", 4) == 0, "recvmsg reads what MSG_PEEK left");
	uint64_t id = 0;
	len = sizeof(id);
	check(getsockopt(fd, IPPROTO_TLS, TLS_ID, &id, &len) == 0 && len == 8 && id != 0, "TLS_ID");
	close(fd);

	struct sockaddr_host host = { .sh_family = AF_HOSTNAME, .sh_port = htons(port) };
	strcpy((char *)host.sh_addr.name, "localhost");
	fd = tls_socket(NULL);
	check(connect(fd, (struct sockaddr *)&host, sizeof(host)) == 0, "connect to AF_HOSTNAME localhost");
	close(fd);

	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[2])) };
	inet_pton(AF_INET6, "::1", &in6.sin6_addr);
	fd = socket(AF_INET6, SOCK_STREAM, IPPROTO_TLS);
	check(fd >= 0, "socket(AF_INET6, SOCK_STREAM, IPPROTO_TLS)");
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	check(connect(fd, (struct sockaddr *)&in6, sizeof(in6)) == 0, "connect to [::1] verified as localhost");
	version = 0;
	len = sizeof(version);
	check(getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_VERSION, &version, &len) == 0 && version == TLS_1_3,
	      "IPv6: TLS_CHOSEN_VERSION is TLS_1_3");
	close(fd);

	fd = tls_socket("wrong.example");
	errno = 0;
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0 && errno == EPROTO, "wrong host name: EPROTO");
	len = sizeof(text);
	text[0] = 0;
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, text, &len);
	printf("TLS_ERROR: %s\n", text);
	check(strstr(text, "not valid for 'wrong.example'") != NULL, "TLS_ERROR says why");
	close(fd);

	/* The test policy denies port 9: refused before any packet leaves. */
	struct sockaddr_in denied = in;
	denied.sin_port = htons(9);
	fd = tls_socket("localhost");
	errno = 0;
	check(connect(fd, (struct sockaddr *)&denied, sizeof(denied)) < 0 && errno == EACCES,
	      "a destination the policy denies is EACCES");
	len = sizeof(text);
	text[0] = 0;
	getsockopt(fd, IPPROTO_TLS, TLS_ERROR, text, &len);
	printf("TLS_ERROR: %s\n", text);
	check(strstr(text, "denied by destinations rule 1") != NULL, "TLS_ERROR names the rule");
	close(fd);

	fd = tls_socket(NULL);
	int bad = 1;
	errno = 0;
	check(setsockopt(fd, IPPROTO_TLS, TLS_VERSION_MIN, &bad, sizeof(bad)) < 0 && errno == EINVAL,
	      "TLS_VERSION_MIN 1 is EINVAL");
	errno = 0;
	check(setsockopt(fd, IPPROTO_TLS, TLS_VERSION_MIN, &bad, 2) < 0 && errno == EINVAL, "a 2-byte int is EINVAL");
	int v13 = TLS_1_3;
	check(setsockopt(fd, IPPROTO_TLS, TLS_VERSION_MIN, &v13, sizeof(v13)) == 0, "TLS_VERSION_MIN TLS_1_3");
	close(fd);

	printf("tls-connect: %d failure(s)\n", failures);
	return failures != 0;
}
