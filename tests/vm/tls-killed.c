/* The backend dies under an open socket: the guest's blocking read must
 * return an error (ECONNRESET), not hang, and new sockets fail cleanly.
 * usage: tls-killed PORT   (a TLS echo server for localhost) */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	if (connect(fd, (struct sockaddr *)&in, sizeof(in)) < 0) {
		perror("connect");
		return 1;
	}
	printf("connected; reading while the backend is killed\n");
	fflush(stdout);
	char byte;
	errno = 0;
	ssize_t r = read(fd, &byte, 1);
	printf("read: %zd errno %d (%s)\n", r, errno, strerror(errno));
	int failures = !(r < 0 && errno == ECONNRESET);
	errno = 0;
	int again = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	printf("new socket: %d errno %d (%s)\n", again, errno, strerror(errno));
	failures += again >= 0;
	close(fd);
	printf("tls-killed: %d failure(s)\n", failures);
	return failures != 0;
}
