/* A program that ends without closing its IPPROTO_TLS socket, as many do:
 * the kernel closes the descriptor, and libipprototls sends close_notify
 * first (at exit), as the device does when the guest's kernel closes it.
 * The echo server (tests/vm/tls-echo-server.py) logs an error for a
 * client that drops TCP without close_notify; the test runner checks it
 * logged none.
 * usage: tls-exit ECHO_PORT */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../../include/in_tls.h"
#include "../../../tests/vm/check.h"

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	struct sockaddr_in in = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])) };
	inet_pton(AF_INET, "127.0.0.1", &in.sin_addr);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10);
	check(connect(fd, (struct sockaddr *)&in, sizeof(in)) == 0, "connect to the echo server");
	char echo[5] = "";
	check(write(fd, "hello", 5) == 5 && read(fd, echo, 5) == 5 && memcmp(echo, "hello", 5) == 0, "echo");
	printf("tls-exit: %d failure(s)\n", failures);
	return failures != 0; /* no close(fd) */
}
