/* tls-get: fetch a page over TLS, verified for HOST, through IPPROTO_TLS.
 * `diff tcp-get.c tls-get.c` is the whole cost of porting it to TLS.
 * usage: tls-get ADDRESS PORT HOST PATH */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s ADDRESS PORT HOST PATH\n", argv[0]);
		return 2;
	}
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
	if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", argv[1]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(fd, IPPROTO_TLS, TLS_HOSTNAME, argv[3], strlen(argv[3]) + 1);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("connect");
		return 1;
	}
	char request[1024];
	int len = snprintf(request, sizeof(request), "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", argv[4], argv[3]);
	for (int sent = 0; sent < len;) {
		ssize_t n = write(fd, request + sent, len - sent);
		if (n < 0) {
			perror("write");
			return 1;
		}
		sent += n;
	}
	char buf[4096];
	ssize_t got;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, got, stdout);
	if (got < 0) {
		perror("read");
		return 1;
	}
	close(fd);
	return 0;
}
