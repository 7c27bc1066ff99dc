/* Client identity (docs/security.md, "Hostile clients and overload"): CIDRs parsed or refused and
 * matched across families, addresses as proxies write them, the client X-Forwarded-For names only
 * behind a trusted proxy (rightmost untrusted entry, a bad entry ends the walk), and the per-client
 * count. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "http/clients.h"

static struct client_key key(const char *s)
{
    struct client_key k;
    if (address_parse(s, &k) != 0) fail_msg("not an address: %s", s);
    return k;
}

static const char *text(const struct client_key *k)
{
    static char out[64];
    address_format(k, out, sizeof out);
    return out;
}

static void cidrs(void **state)
{
    const char *good[] = {"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1", "0.0.0.0/0", "::/0"};
    const char *bad[] = {"",
                         "10.0.0.0/33",
                         "10.0.0.0/",
                         "10.0.0.0/x",
                         "::/129",
                         "10.0.0.0/-1",
                         "host.example",
                         "[::1]",
                         "10.0.0.0/8 ",
                         "10.0.0.0/+8",
                         "1.2.3"};
    struct cidr c[3];
    struct client_key k;
    (void)state;
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (address_cidr_parse(good[i], &c[0]) != 0) fail_msg("refused %s", good[i]);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (address_cidr_parse(bad[i], &c[0]) == 0) fail_msg("accepted %s", bad[i]);
    assert_int_equal(address_cidr_parse("10.1.2.3/8", &c[0]), 0); /* host bits are masked */
    assert_int_equal(address_cidr_parse("2001:db8::/32", &c[1]), 0);
    assert_int_equal(address_cidr_parse("192.0.2.7", &c[2]), 0);
    {
        /* an IPv4 CIDR matches the IPv4-mapped form a dual-stack socket reports */
        const struct {
            const char *addr;
            bool in;
        } cases[] = {{"10.200.0.1", true},      {"11.0.0.1", false}, {"2001:db8:ffff::5", true},
                     {"2001:db9::5", false},    {"192.0.2.7", true}, {"192.0.2.8", false},
                     {"::ffff:10.9.9.9", true}, {"::a00:1", false}};
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            k = key(cases[i].addr);
            if (address_cidr_list_has(c, 3, &k) != cases[i].in)
                fail_msg("%s: expected %s", cases[i].addr, cases[i].in ? "in" : "out");
        }
    }
    assert_false(address_cidr_list_has(NULL, 0, &k));
}

static void addresses(void **state)
{
    struct client_key k;
    (void)state;
    k = key("203.0.113.9");
    assert_string_equal(text(&k), "203.0.113.9");
    k = key(" 203.0.113.9:4711 ");
    assert_string_equal(text(&k), "203.0.113.9");
    k = key("[2001:db8::1]:80");
    assert_string_equal(text(&k), "2001:db8::1");
    k = key("2001:db8::1");
    assert_string_equal(text(&k), "2001:db8::1");
    assert_int_equal(address_parse("", &k), -1);
    assert_int_equal(address_parse("unknown", &k), -1);
    assert_int_equal(address_parse("[::1", &k), -1);
    assert_int_equal(address_parse("1.2.3.4.5", &k), -1);
    assert_int_equal(address_parse("1.2.3.4:80:90", &k), -1);
}

static const char *who(const char *peer, const char *const *xff, size_t n)
{
    struct cidr t[2];
    struct client_key p = key(peer), c;
    assert_int_equal(address_cidr_parse("10.0.0.0/8", &t[0]), 0);
    assert_int_equal(address_cidr_parse("::1", &t[1]), 0);
    address_identify_client(&p, xff, n, t, 2, &c);
    return text(&c);
}

static void forwarded_for(void **state)
{
    (void)state;
    /* an untrusted peer: whatever it writes, it is the client */
    assert_string_equal(who("198.51.100.1", (const char *[]){"203.0.113.5"}, 1), "198.51.100.1");
    /* a trusted one without the header is the client itself */
    assert_string_equal(who("10.0.0.1", NULL, 0), "10.0.0.1");
    assert_string_equal(who("10.0.0.1", (const char *[]){NULL}, 1), "10.0.0.1");
    /* the rightmost entry no trusted proxy wrote */
    assert_string_equal(who("10.0.0.1", (const char *[]){"203.0.113.5"}, 1), "203.0.113.5");
    assert_string_equal(who("10.0.0.1", (const char *[]){"1.1.1.1, 203.0.113.5"}, 1),
                        "203.0.113.5");
    assert_string_equal(who("10.0.0.1", (const char *[]){"203.0.113.5, 10.0.0.2,10.0.0.3"}, 1),
                        "203.0.113.5");
    assert_string_equal(who("::1", (const char *[]){"1.1.1.1", "2001:db8::7, 10.1.1.1"}, 2),
                        "2001:db8::7");
    /* every entry trusted: the leftmost */
    assert_string_equal(who("10.0.0.1", (const char *[]){"10.0.0.9, 10.0.0.8"}, 1), "10.0.0.9");
    /* a bad entry ends the walk at the last address a trusted proxy vouched for */
    assert_string_equal(who("10.0.0.1", (const char *[]){"203.0.113.5, unknown, 10.0.0.3"}, 1),
                        "10.0.0.3");
    assert_string_equal(who("10.0.0.1", (const char *[]){"unknown"}, 1), "10.0.0.1");
    assert_string_equal(who("10.0.0.1", (const char *[]){"203.0.113.5,"}, 1), "10.0.0.1");
    assert_string_equal(who("10.0.0.1", (const char *[]){"203.0.113.5:1234"}, 1), "203.0.113.5");
}

static void counts_per_client(void **state)
{
    struct client_key a = key("203.0.113.1"), b = key("203.0.113.2");
    (void)state;
    assert_int_equal(clients_enter(&a, 2), 0);
    assert_int_equal(clients_enter(&a, 2), 0);
    assert_int_equal(clients_enter(&a, 2), -1);
    assert_int_equal(clients_enter(&b, 2), 0); /* its own count */
    clients_leave(&a);
    assert_int_equal(clients_enter(&a, 2), 0);
    assert_int_equal(clients_enter(&a, 0), 0); /* 0: no cap */
    for (int i = 0; i < 3; i++)
        clients_leave(&a);
    clients_leave(&b);
    assert_int_equal(clients_enter(&a, 1), 0); /* all given back */
    clients_leave(&a);
    assert_int_equal(clients_open(), 0);
}

/* The console without a token answers loopback names only: a name that merely looks like an
 * address is not one (DNS rebinding). */
static void loopback_hosts(void **state)
{
    static const char *const yes[] = {"127.0.0.1", "127.0.0.1:9090", "127.9.8.7:1", "[::1]:9090",
                                      "[::1]",     "localhost",      "LocalHost:80"};
    static const char *const no[] = {"127.attacker.example:9090",
                                     "127.0.0.1.nip.io:9090",
                                     "localhost.attacker.example",
                                     "0.0.0.0:9090",
                                     "[::]:9090",
                                     "10.0.0.1",
                                     "::1",
                                     "[::1",
                                     "[::1]x",
                                     "",
                                     ":9090",
                                     "128.0.0.1",
                                     "[::ffff:127.0.0.1]x"};
    (void)state;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!address_is_loopback_host(yes[i])) fail_msg("%s: not loopback?", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (address_is_loopback_host(no[i])) fail_msg("%s: loopback?", no[i]);
    assert_false(address_is_loopback_host(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(cidrs),
        cmocka_unit_test(addresses),
        cmocka_unit_test(loopback_hosts),
        cmocka_unit_test(forwarded_for),
        cmocka_unit_test(counts_per_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
