/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * in_tls.h: the Secure Socket API (IPPROTO_TLS), one header for both
 * transports: programs in a vhost-tls guest (the virtio_tls.ko driver) and
 * programs anywhere else under libipprototls (LD_PRELOAD or -lipprototls).
 * Source-compatible with SSA's in_tls.h: the numbers are SSA's, and they
 * are the ones on the virtio-tls wire (spec/src/wire.rs,
 * spec/virtio-tls.md 2.10).
 */
#ifndef VHOST_TLS_IN_TLS_H
#define VHOST_TLS_IN_TLS_H

#include <sys/socket.h>

#define IPPROTO_TLS (715 % 255) /* 205 */

/* Option names, level IPPROTO_TLS. */
#define TLS_REMOTE_HOSTNAME            85
#define TLS_HOSTNAME                   85
#define TLS_TRUSTED_PEER_CERTIFICATES  87
#define TLS_CERTIFICATE_CHAIN          88
#define TLS_PRIVATE_KEY                89
#define TLS_ALPN                       90
#define TLS_SESSION_TTL                91
#define TLS_DISABLE_CIPHER             92
#define TLS_PEER_IDENTITY              93
#define TLS_REQUEST_PEER_AUTH          94
#define TLS_PEER_CERTIFICATE_CHAIN     95
#define TLS_ID                         96
#define TLS_TRUSTED_CIPHERS            97
#define TLS_CHOSEN_CIPHER              98
#define TLS_ERROR                      100
#define TLS_REVOCATION_CHECKS          102
#define TLS_CONTEXT                    107
#define TLS_SESSION_REUSE              108
#define TLS_RESUMED_SESSION            109
#define TLS_ENABLE_CIPHER              110
#define TLS_VERSION_MIN                111
#define TLS_VERSION_MAX                112
#define TLS_CHOSEN_VERSION             113

/* Values of TLS_VERSION_MIN/MAX/CHOSEN_VERSION. */
#define TLS_1_2 2
#define TLS_1_3 3

/* Connect by host name: the system resolves it and verifies the peer. */
#define AF_HOSTNAME 43

struct host_addr {
	unsigned char name[120];
};

struct sockaddr_host {
	sa_family_t sh_family;
	unsigned short sh_port;
	struct host_addr sh_addr;
};

#endif /* VHOST_TLS_IN_TLS_H */
