/*
 * test_net_url.c - peer URL parsing: the spellings etcd operators write are
 * accepted (http and https, IPv4, [IPv6], host names, a trailing "/"), everything else is
 * NET_EURL rather than a guess.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "net/internal.h"
#include "tests/harness.h"

TEST(accepts_ipv4_ipv6_and_names) {
    struct net__url u;
    ASSERT_EQ(net__url_parse("http://127.0.0.1:2380", &u), 0);
    ASSERT(u.literal);
    ASSERT_STR_EQ(u.host, "127.0.0.1");
    ASSERT_EQ(u.port, 2380);
    ASSERT_EQ(u.addr.ss_family, AF_INET);
    ASSERT_EQ(ntohs(((struct sockaddr_in *)&u.addr)->sin_port), 2380);

    ASSERT_EQ(net__url_parse("http://[::1]:0", &u), 0);
    ASSERT(u.literal);
    ASSERT_STR_EQ(u.host, "::1");
    ASSERT_EQ(u.port, 0);
    ASSERT_EQ(u.addr.ss_family, AF_INET6);

    ASSERT_EQ(net__url_parse("HTTP://[fd00::2]:65535/", &u), 0);
    ASSERT_EQ(u.port, 65535);
    ASSERT(!u.tls);

    /* https:// says the peer speaks TLS; the rest parses the same. */
    ASSERT_EQ(net__url_parse("https://127.0.0.1:2380", &u), 0);
    ASSERT(u.tls);
    ASSERT(u.literal);
    ASSERT_EQ(u.port, 2380);
    ASSERT_EQ(net__url_parse("HTTPS://localhost:2380/", &u), 0);
    ASSERT(u.tls);
    ASSERT(!u.literal);
    ASSERT_STR_EQ(u.host, "localhost");

    ASSERT_EQ(net__url_parse("http://node-1.example.com:2380", &u), 0);
    ASSERT(!u.literal);
    ASSERT_STR_EQ(u.host, "node-1.example.com");
    ASSERT_EQ(u.port, 2380);

    char buf[NET__ADDR_MAX];
    ASSERT_EQ(net__url_parse("http://[::1]:7", &u), 0);
    net__addr_format((struct sockaddr *)&u.addr, buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "[::1]:7");
    ASSERT_EQ(net__url_parse("http://10.1.2.3:80", &u), 0);
    net__addr_format((struct sockaddr *)&u.addr, buf, sizeof(buf));
    ASSERT_STR_EQ(buf, "10.1.2.3:80");
}

TEST(refuses_everything_else) {
    static const char *bad[] = {
        "",
        "127.0.0.1:2380", /* no scheme */
        "ftp://127.0.0.1:2380",
        "httpss://127.0.0.1:2380",
        "unix:///tmp/s",
        "http://127.0.0.1", /* no port */
        "http://127.0.0.1:",
        "http://127.0.0.1:65536",
        "http://127.0.0.1:123456",
        "http://127.0.0.1:-1",
        "http://127.0.0.1:80x",
        "http://127.0.0.1:80/path",
        "http://127.0.0.1:80//",
        "http://:80",
        "http://[::1:80",
        "http://[::1]80",
        "http://[not-v6]:80",
        "http://[fe80::1%eth0]:80",
        "http://user@host:80",
        "http://ho st:80",
        "http://::1:80", /* IPv6 without brackets */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct net__url u;
        int rc = net__url_parse(bad[i], &u);
        if (rc != NET_EURL) fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
        ASSERT_EQ(rc, NET_EURL);
    }
    struct net__url u;
    ASSERT_EQ(net__url_parse(NULL, &u), NET_EURL);
    char longurl[NET_URL_MAX + 32];
    memset(longurl, 'a', sizeof(longurl));
    memcpy(longurl, "http://", 7);
    memcpy(longurl + sizeof(longurl) - 6, ":2380", 6);
    ASSERT_EQ(net__url_parse(longurl, &u), NET_EURL);
}

int main(int argc, char **argv) {
    return harness_main(argc, argv);
}
