/* tls-fetch: fetch a page by host name over IPPROTO_TLS and say how the
 * connection was secured. The host name goes to the system (AF_HOSTNAME):
 * it resolves it and verifies the server's certificate for it.
 * usage: tls-fetch HOST PORT PATH */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "../../include/in_tls.h"

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s HOST PORT PATH\n", argv[0]);
		return 2;
	}
	struct sockaddr_host addr = { .sh_family = AF_HOSTNAME, .sh_port = htons(atoi(argv[2])) };
	if (strlen(argv[1]) >= sizeof(addr.sh_addr.name)) {
		fprintf(stderr, "host name too long\n");
		return 2;
	}
	strcpy((char *)addr.sh_addr.name, argv[1]);
	int fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (fd < 0) {
		perror("socket(IPPROTO_TLS)");
		return 1;
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("connect");
		char reason[256] = "";
		socklen_t len = sizeof(reason);
		if (getsockopt(fd, IPPROTO_TLS, TLS_ERROR, reason, &len) == 0 && reason[0])
			fprintf(stderr, "TLS_ERROR: %s\n", reason);
		return 1;
	}
	char request[1024];
	int len = snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", argv[3], argv[1]);
	if (write(fd, request, len) != len) {
		perror("write");
		return 1;
	}
	printf("--- reply ---\n");
	char buf[4096];
	ssize_t got;
	while ((got = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, got, stdout);
	if (got < 0) {
		perror("read");
		return 1;
	}
	printf("--- end of reply ---\n");
	int version = 0;
	socklen_t vlen = sizeof(version);
	char cipher[64] = "", peer[256] = "";
	socklen_t clen = sizeof(cipher), plen = sizeof(peer);
	getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_VERSION, &version, &vlen);
	getsockopt(fd, IPPROTO_TLS, TLS_CHOSEN_CIPHER, cipher, &clen);
	getsockopt(fd, IPPROTO_TLS, TLS_PEER_IDENTITY, peer, &plen);
	printf("TLS version:   %s\n", version == TLS_1_3 ? "TLSv1.3" : version == TLS_1_2 ? "TLSv1.2" : "unknown");
	printf("cipher suite:  %s\n", cipher);
	printf("peer identity: %s\n", peer);
	close(fd);
	return 0;
}
