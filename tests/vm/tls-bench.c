/* Guest-level benchmark: one program, two TLS transports.
 *
 * Built plain, it uses IPPROTO_TLS sockets (the virtio-tls device: TLS
 * runs on the host). Built with -DWITH_OPENSSL, it runs OpenSSL inside the
 * guest over an ordinary TCP socket (virtio-net): the baseline.
 *
 * usage: tls-bench ADDRESS SOURCE_PORT ECHO_PORT SINK_PORT BYTES HANDSHAKES [CAFILE]
 * Downloads BYTES from SOURCE_PORT (a server that sends BYTES, then
 * close_notify), uploads BYTES to SINK_PORT (a server that reads all, then
 * answers the client's close_notify with its own) and does HANDSHAKES
 * connect+handshake+close cycles to ECHO_PORT, verifying the server as
 * "localhost"; prints
 *   tls-bench MODE: download MIBS MiB/s, upload MIBS MiB/s, handshakes RATE/s[, resumed RATE/s]
 * Times are the guest's CLOCK_MONOTONIC. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../include/in_tls.h"
#include "check.h"

#ifdef WITH_OPENSSL
#include <openssl/err.h>
#include <openssl/ssl.h>
static SSL_CTX *ctx;
#define MODE "openssl-in-guest"
#else
#define MODE "virtio-tls"
#endif

static struct sockaddr_in server;
static char buf[256 * 1024];

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Where a handshake cycle's time goes, summed over a handshakes() run and
 * printed per cycle: the guest-level profile of issue 7. For virtio-tls,
 * setup is socket() plus the setsockopt() calls (control requests), connect
 * the TCP connect and handshake on the host, close the CLOSE request; for
 * OpenSSL, setup is socket() plus the TCP connect, connect SSL_connect().
 */
static struct phases {
	double setup, connect, close;
} phases;

/* One TLS connection to PORT, handshake done; *handle for reads. */
#ifdef WITH_OPENSSL
static SSL *open_tls(int port, int *fd)
{
	server.sin_port = htons(port);
	double t0 = now();
	*fd = socket(AF_INET, SOCK_STREAM, 0);
	if (*fd < 0 || connect(*fd, (struct sockaddr *)&server, sizeof(server)) != 0)
		return NULL;
	SSL *ssl = SSL_new(ctx);
	SSL_set_fd(ssl, *fd);
	SSL_set_tlsext_host_name(ssl, "localhost");
	SSL_set1_host(ssl, "localhost");
	double t1 = now();
	if (SSL_connect(ssl) != 1) {
		ERR_print_errors_fp(stdout);
		SSL_free(ssl);
		return NULL;
	}
	phases.setup += t1 - t0;
	phases.connect += now() - t1;
	return ssl;
}

static void close_tls(SSL *ssl, int fd)
{
	double t0 = now();
	SSL_shutdown(ssl);
	SSL_free(ssl);
	close(fd);
	phases.close += now() - t0;
}

static long read_tls(SSL *ssl, int fd)
{
	(void)fd;
	int n = SSL_read(ssl, buf, sizeof(buf));
	return n > 0 ? n : 0;
}
#else
static int open_tls(int port, int *fd, int reuse)
{
	server.sin_port = htons(port);
	double t0 = now();
	*fd = socket(AF_INET, SOCK_STREAM, IPPROTO_TLS);
	if (*fd < 0)
		return 0;
	setsockopt(*fd, IPPROTO_TLS, TLS_SESSION_REUSE, &reuse, sizeof(reuse));
	if (setsockopt(*fd, IPPROTO_TLS, TLS_HOSTNAME, "localhost", 10) != 0) {
		close(*fd);
		return 0;
	}
	double t1 = now();
	if (connect(*fd, (struct sockaddr *)&server, sizeof(server)) != 0) {
		close(*fd);
		return 0;
	}
	phases.setup += t1 - t0;
	phases.connect += now() - t1;
	return 1;
}

static void close_tls(int fd)
{
	double t0 = now();
	close(fd);
	phases.close += now() - t0;
}

static long read_tls(int fd)
{
	ssize_t n = recv(fd, buf, sizeof(buf), 0);
	return n > 0 ? n : 0;
}
#endif

static double download(int port, long bytes)
{
	int fd;
	long got = 0, n;
	double start = now();
#ifdef WITH_OPENSSL
	SSL *ssl = open_tls(port, &fd);
	check(ssl != NULL, "connect to the source");
	if (!ssl)
		return 0;
	while ((n = read_tls(ssl, fd)) > 0)
		got += n;
	close_tls(ssl, fd);
#else
	check(open_tls(port, &fd, 1), "connect to the source");
	while ((n = read_tls(fd)) > 0)
		got += n;
	close_tls(fd);
#endif
	double seconds = now() - start;
	check(got == bytes, "every byte of the download arrived");
	return bytes / 1048576.0 / seconds;
}

/* Sends BYTES, ends the stream with close_notify and waits for the
 * server's: then every byte has arrived. */
static double upload(int port, long bytes)
{
	int fd;
	long sent = 0;
	memset(buf, 0x5a, sizeof(buf));
	double start = now();
#ifdef WITH_OPENSSL
	SSL *ssl = open_tls(port, &fd);
	check(ssl != NULL, "connect to the sink");
	if (!ssl)
		return 0;
	while (sent < bytes) {
		long chunk = bytes - sent < (long)sizeof(buf) ? bytes - sent : (long)sizeof(buf);
		int n = SSL_write(ssl, buf, (int)chunk);
		if (n <= 0)
			break;
		sent += n;
	}
	SSL_shutdown(ssl);
	while (SSL_read(ssl, buf, sizeof(buf)) > 0)
		;
	SSL_free(ssl);
	close(fd);
#else
	check(open_tls(port, &fd, 1), "connect to the sink");
	while (sent < bytes) {
		size_t chunk = bytes - sent < (long)sizeof(buf) ? (size_t)(bytes - sent) : sizeof(buf);
		ssize_t n = send(fd, buf, chunk, 0);
		if (n <= 0)
			break;
		sent += n;
	}
	shutdown(fd, SHUT_WR);
	while (recv(fd, buf, sizeof(buf), 0) > 0)
		;
	close(fd);
#endif
	double seconds = now() - start;
	check(sent == bytes, "every byte of the upload was sent");
	return bytes / 1048576.0 / seconds;
}

static double handshakes(int port, int count, int reuse)
{
	int ok = 0, fd;
	memset(&phases, 0, sizeof(phases));
	double start = now();
	for (int i = 0; i < count; i++) {
#ifdef WITH_OPENSSL
		(void)reuse;
		SSL *ssl = open_tls(port, &fd);
		if (ssl) {
			ok++;
			close_tls(ssl, fd);
		}
#else
		if (open_tls(port, &fd, reuse)) {
			ok++;
			close_tls(fd);
		}
#endif
	}
	double seconds = now() - start;
	check(ok == count, "every handshake completed");
	if (ok > 0)
		printf("tls-bench %s: per %s handshake cycle, µs: setup %.0f, connect %.0f, close %.0f, other %.0f\n", MODE,
		       reuse ? "resumed" : "full", phases.setup / ok * 1e6, phases.connect / ok * 1e6,
		       phases.close / ok * 1e6, (seconds - phases.setup - phases.connect - phases.close) / ok * 1e6);
	return count / seconds;
}

int main(int argc, char **argv)
{
	if (argc < 7) {
		fprintf(stderr, "usage: tls-bench ADDRESS SOURCE_PORT ECHO_PORT SINK_PORT BYTES HANDSHAKES [CAFILE]\n");
		return 2;
	}
	server.sin_family = AF_INET;
	inet_pton(AF_INET, argv[1], &server.sin_addr);
	int source_port = atoi(argv[2]), echo_port = atoi(argv[3]), sink_port = atoi(argv[4]), count = atoi(argv[6]);
	long bytes = atol(argv[5]);
#ifdef WITH_OPENSSL
	ctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	check(argc > 7 && SSL_CTX_load_verify_locations(ctx, argv[7], NULL) == 1, "load the CA");
	double mibs = download(source_port, bytes);
	double up = upload(sink_port, bytes);
	double rate = handshakes(echo_port, count, 0);
	printf("tls-bench %s: download %.2f MiB/s, upload %.2f MiB/s, handshakes %.1f/s\n", MODE, mibs, up, rate);
#else
	double mibs = download(source_port, bytes);
	double up = upload(sink_port, bytes);
	int full = 0, resume = 1;
	double rate = handshakes(echo_port, count, full);
	double resumed = handshakes(echo_port, count, resume);
	printf("tls-bench %s: download %.2f MiB/s, upload %.2f MiB/s, handshakes %.1f/s, resumed %.1f/s\n", MODE, mibs, up,
	       rate, resumed);
#endif
	printf("tls-bench: %d failure(s)\n", failures);
	return failures != 0;
}
