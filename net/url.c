/*
 * url.c - peer URLs as etcd writes them ("http://10.0.0.1:2380",
 * "http://[::1]:2380", "http://node1:2380") and socket address names.
 *
 * The scheme says whether the peer speaks TLS ("https://") or plain TCP
 * ("http://"); anything else is refused rather than guessed. A URL carries
 * exactly a host and a port; paths, user info, queries and IPv6 zone ids
 * are refused, so one member has one spelling.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "net/internal.h"

static bool is_name_char(char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.';
}

int net__url_parse(const char *url, struct net__url *u) {
    NET__ASSERT(u != NULL);
    static const char http[] = "http://", https[] = "https://";
    if (url == NULL || strlen(url) > NET_URL_MAX) return NET_EURL;
    size_t scheme_len;
    bool tls;
    if (strncasecmp(url, http, sizeof(http) - 1) == 0) {
        scheme_len = sizeof(http) - 1;
        tls = false;
    } else if (strncasecmp(url, https, sizeof(https) - 1) == 0) {
        scheme_len = sizeof(https) - 1;
        tls = true;
    } else {
        return NET_EURL;
    }
    memset(u, 0, sizeof(*u));
    u->tls = tls;
    const char *p = url + scheme_len;
    const char *host, *host_end;
    bool bracketed = false;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (host_end == NULL) return NET_EURL;
        p = host_end + 1;
        bracketed = true;
    } else {
        host = p;
        while (*p != '\0' && *p != ':' && *p != '/') p++;
        host_end = p;
    }
    size_t host_len = (size_t)(host_end - host);
    if (host_len == 0 || host_len >= sizeof(u->host)) return NET_EURL;
    memcpy(u->host, host, host_len);
    u->host[host_len] = '\0';

    /* A port is required: a peer URL without one is almost always a typo. */
    if (*p != ':') return NET_EURL;
    p++;
    unsigned long port = 0;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9') {
        port = port * 10 + (unsigned long)(*p - '0');
        if (++digits > 5) return NET_EURL;
        p++;
    }
    if (digits == 0 || port > 65535) return NET_EURL;
    if (*p == '/') p++;
    if (*p != '\0') return NET_EURL;
    u->port = (uint16_t)port;

    struct sockaddr_in *sin = (struct sockaddr_in *)&u->addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&u->addr;
    if (bracketed) {
        if (inet_pton(AF_INET6, u->host, &sin6->sin6_addr) != 1) return NET_EURL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(u->port);
        u->literal = true;
        return 0;
    }
    if (inet_pton(AF_INET, u->host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(u->port);
        u->literal = true;
        return 0;
    }
    for (size_t i = 0; i < host_len; i++)
        if (!is_name_char(u->host[i])) return NET_EURL;
    u->literal = false;
    return 0;
}

void net__addr_format(const struct sockaddr *sa, char *buf, size_t cap) {
    NET__ASSERT(buf != NULL && cap > 0);
    char ip[INET6_ADDRSTRLEN] = "?";
    if (sa != NULL && sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
        snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(sin->sin_port));
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(sin6->sin6_port));
    } else {
        snprintf(buf, cap, "?");
    }
}
