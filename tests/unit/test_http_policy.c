/* The outbound address policy: allow entries parsed or refused, and the verdict for public,
 * private, loopback, link-local, CGNAT, ULA, multicast, IPv4-mapped, NAT64 and metadata
 * addresses, with and without allow lists, host patterns and allow_private. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "base/http_policy.h"

static enum http_verdict verdict(const char *const *allow, int n, int has_allow, int priv,
                                 const char *host, const char *ip)
{
    struct http_allow a[8];
    struct sockaddr_storage ss;
    char why[256];
    enum http_verdict v;

    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
        ss.ss_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
        ss.ss_family = AF_INET6;
    else
        fail_msg("bad test address %s", ip);
    for (int i = 0; i < n; i++)
        assert_int_equal(http_policy_allow_parse(allow[i], &a[i]), 0);
    v = http_policy_check(a, (size_t)n, has_allow, priv, host, (struct sockaddr *)&ss, why,
                          sizeof why);
    if (v != HTTP_OK) assert_true(strstr(why, ip) != NULL || strstr(why, "refused") != NULL);
    for (int i = 0; i < n; i++)
        free(a[i].host);
    return v;
}

static void entries(void **state)
{
    struct http_allow a;
    const char *good[] = {"203.0.113.0/24",  "10.1.2.3",      "2001:db8::/32", "::1",
                          "api.example.com", "*.example.com", "localhost",     "x-1.y"};
    const char *bad[] = {"",         "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x",
                         "::/129",   "*.",          "a..b",      "bad host",
                         "http://x", "a/b",         "*x.com",    "ex_ample.com"};
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (http_policy_allow_parse(good[i], &a) != 0) fail_msg("refused %s", good[i]);
        free(a.host);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (http_policy_allow_parse(bad[i], &a) == 0) fail_msg("accepted %s", bad[i]);
}

static void verdicts(void **state)
{
    const char *refused[] = {"127.0.0.1",        "10.0.0.5",   "172.16.9.9", "192.168.1.1",
                             "169.254.1.1",      "100.64.0.1", "0.0.0.0",    "224.0.0.1",
                             "255.255.255.255",  "::1",        "::",         "fe80::1",
                             "fc00::1",          "fd12::1",    "ff02::1",    "::ffff:8.8.8.8",
                             "64:ff9b::808:808", "198.18.0.1"};
    const char *lan[] = {"10.0.0.0/8"};
    const char *hosts[] = {"api.example.com", "*.example.org"};
    const char *metadata_cidr[] = {"169.254.0.0/16"};
    (void)state;
    assert_int_equal(verdict(NULL, 0, 0, 0, "example.com", "93.184.216.34"), HTTP_OK);
    assert_int_equal(verdict(NULL, 0, 0, 0, "example.com", "2606:2800:220:1::1"), HTTP_OK);
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (verdict(NULL, 0, 0, 0, "h", refused[i]) != HTTP_REFUSED_ADDRESS)
            fail_msg("%s was not refused", refused[i]);
    /* allow_private lets them through; a CIDR in allow names only its own */
    assert_int_equal(verdict(NULL, 0, 0, 1, "h", "10.0.0.5"), HTTP_OK);
    assert_int_equal(verdict(lan, 1, 1, 0, "h", "10.0.0.5"), HTTP_OK);
    assert_int_equal(verdict(lan, 1, 1, 0, "h", "192.168.1.1"), HTTP_NOT_ALLOWED);
    /* metadata: never, whatever allows it */
    assert_int_equal(verdict(NULL, 0, 0, 1, "h", "169.254.169.254"), HTTP_REFUSED_ADDRESS);
    assert_int_equal(verdict(metadata_cidr, 1, 1, 1, "h", "169.254.169.254"), HTTP_REFUSED_ADDRESS);
    assert_int_equal(verdict(NULL, 0, 0, 1, "h", "fd00:ec2::254"), HTTP_REFUSED_ADDRESS);
    assert_int_equal(verdict(NULL, 0, 0, 1, "h", "100.100.100.200"), HTTP_REFUSED_ADDRESS);
    /* metadata in IPv6 clothing, with allow_private on: every form that carries the IPv4
     * address is judged by it */
    {
        const char *dressed[] = {
            "::ffff:169.254.169.254",    "::ffff:a9fe:a9fe",         "::169.254.169.254",
            "::ffff:0:169.254.169.254",  "64:ff9b::169.254.169.254", "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",         "2002:a9fe:a9fe:1::",       "2001:0:a9fe:a9fe::1",
            "2001:0:102:304::5601:5601", "::ffff:100.100.100.200",   "64:ff9b::192.0.0.192",
            "64:ff9b:1:a9fe:a9:fe00::"};
        for (size_t i = 0; i < sizeof dressed / sizeof dressed[0]; i++)
            if (verdict(metadata_cidr, 1, 1, 1, "h", dressed[i]) != HTTP_REFUSED_ADDRESS)
                fail_msg("%s reached a metadata address", dressed[i]);
    }
    /* private IPv4 behind 6to4 or Teredo is private; a public one stays public */
    assert_int_equal(verdict(NULL, 0, 0, 0, "h", "2002:7f00:1::1"), HTTP_REFUSED_ADDRESS);
    assert_int_equal(verdict(NULL, 0, 0, 0, "h", "2002:0a00:0001::1"), HTTP_REFUSED_ADDRESS);
    assert_int_equal(verdict(NULL, 0, 0, 0, "h", "2001:0:808:808::f7f7:f7f7"), HTTP_OK);
    assert_int_equal(verdict(NULL, 0, 0, 0, "h", "2001:0:808:808::f5ff:fffe"),
                     HTTP_REFUSED_ADDRESS);
    /* host entries: exact and subdomains; an allowed host at a private address is refused */
    assert_int_equal(verdict(hosts, 2, 1, 0, "api.example.com", "93.184.216.34"), HTTP_OK);
    assert_int_equal(verdict(hosts, 2, 1, 0, "API.Example.com", "93.184.216.34"), HTTP_OK);
    assert_int_equal(verdict(hosts, 2, 1, 0, "a.b.example.org", "93.184.216.34"), HTTP_OK);
    assert_int_equal(verdict(hosts, 2, 1, 0, "example.org", "93.184.216.34"), HTTP_NOT_ALLOWED);
    assert_int_equal(verdict(hosts, 2, 1, 0, "evil.com", "93.184.216.34"), HTTP_NOT_ALLOWED);
    assert_int_equal(verdict(hosts, 2, 1, 0, "api.example.com", "127.0.0.1"), HTTP_REFUSED_ADDRESS);
    /* an empty allow list allows nothing */
    assert_int_equal(verdict(NULL, 0, 1, 0, "example.com", "93.184.216.34"), HTTP_NOT_ALLOWED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(entries), cmocka_unit_test(verdicts)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
