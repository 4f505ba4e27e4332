/* Address helpers (dataplane/util/net.c): IPV4:PORT for listeners, HOST:PORT for clients. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "ibrain/net.h"

static void test_split_hostport(void **state)
{
    (void)state;
    char host[IB_HOSTPORT_MAX];
    unsigned port = 0;
    assert_int_equal(ib_split_hostport("127.0.0.1:6379", host, sizeof(host), &port), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 6379);
    const char *name = "ib-ibrain-sentinel-2.ib-ibrain-sentinel.ibrain-system.svc.cluster.local:26379";
    assert_int_equal(ib_split_hostport(name, host, sizeof(host), &port), 0);
    assert_string_equal(host, "ib-ibrain-sentinel-2.ib-ibrain-sentinel.ibrain-system.svc.cluster.local");
    assert_int_equal(port, 26379);
    const char *bad[] = {"", ":80", "host", "host:", "host:0", "host:65536", "host:80x", "ho st:80", "a/b:80",
                         "host:-1", "host:+80", NULL};
    for (int i = 0; bad[i] != NULL; i++)
        if (ib_split_hostport(bad[i], host, sizeof(host), &port) != -1)
            fail_msg("accepted '%s'", bad[i]);
    assert_int_equal(ib_split_hostport(NULL, host, sizeof(host), &port), -1);
    char longname[300];
    memset(longname, 'a', 254);
    strcpy(longname + 254, ":80");
    assert_int_equal(ib_split_hostport(longname, host, sizeof(host), &port), -1); /* over 253 */
    longname[253] = ':';
    strcpy(longname + 254, "80");
    assert_int_equal(ib_split_hostport(longname, host, sizeof(host), &port), 0);
    char small[8];
    assert_int_equal(ib_split_hostport("localhost:80", small, sizeof(small), &port), -1); /* does not fit */
}

static void test_parse_hostport(void **state)
{
    (void)state;
    struct sockaddr_in sa;
    assert_int_equal(ib_parse_hostport("127.0.0.1:0", &sa), 0);
    assert_int_equal(ib_parse_hostport("localhost:80", &sa), 0);
    assert_int_equal(ib_parse_hostport("redis.svc:80", &sa), -1); /* listeners take addresses only */
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_split_hostport), cmocka_unit_test(test_parse_hostport)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
