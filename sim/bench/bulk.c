/* Bulk TCP sender and sink for sim/bench/dataplane.sh.
 *
 *   bulk sink PORT [READY_FILE]
 *       Listens on 127.0.0.1:PORT. For each accepted connection (one after
 *       another): reads into a reused 256 KiB buffer until the peer closes its
 *       sending side, writes "<bytes> <reads>\n" back and closes. <reads> is the
 *       number of read() calls that returned data: it shows how finely the last
 *       hop (the proxy in front of the sink) delivers the stream.
 *   bulk send PORT BYTES [CHUNK]
 *       Connects to 127.0.0.1:PORT, writes BYTES in CHUNK-byte writes (default
 *       256 KiB, one reused buffer, each write completed before the next),
 *       shuts down its sending side, waits for the sink's count. Prints one JSON
 *       line; the clock runs from just before connect() until the count arrives.
 *       Exit 0 iff the confirmed count equals BYTES.
 *
 * Build: gcc -O2 -o bulk bulk.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in addr(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int sink(int port, const char *ready) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = addr(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
        perror("sink: bind/listen");
        return 1;
    }
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f) { fputs("ready\n", f); fclose(f); }
    }
    size_t cap = 256 * 1024;
    char *buf = malloc(cap);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; perror("sink: accept"); return 1; }
        unsigned long long n = 0, reads = 0;
        for (;;) {
            ssize_t k = read(c, buf, cap);
            if (k < 0) {
                if (errno == EINTR) continue;
                fprintf(stderr, "sink: read error after %llu bytes: %s\n", n, strerror(errno));
                break;
            }
            if (k == 0) break;
            n += (unsigned long long)k;
            reads++;
        }
        char line[64];
        int len = snprintf(line, sizeof line, "%llu %llu\n", n, reads);
        write_all(c, line, (size_t)len);
        close(c);
    }
}

static int sendbulk(int port, unsigned long long total, size_t chunk) {
    char *buf = calloc(1, chunk);
    double t0 = now();
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = addr(port);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("send: connect"); return 1; }
    unsigned long long left = total;
    while (left > 0) {
        size_t n = left < chunk ? (size_t)left : chunk;
        if (write_all(s, buf, n) < 0) {
            fprintf(stderr, "send: write error after %llu bytes: %s\n", total - left, strerror(errno));
            return 1;
        }
        left -= n;
    }
    double t_sent = now();
    shutdown(s, SHUT_WR);
    char reply[64];
    size_t got = 0;
    while (got < sizeof reply - 1) {
        ssize_t k = read(s, reply + got, sizeof reply - 1 - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
        if (reply[got - 1] == '\n') break;
    }
    double t1 = now();
    reply[got] = 0;
    close(s);
    char *end = reply;
    long long confirmed = got > 0 ? strtoll(reply, &end, 10) : -1;
    long long reads = got > 0 ? strtoll(end, NULL, 10) : 0;
    double secs = t1 - t0;
    printf("{\"bytes\": %llu, \"confirmed\": %lld, \"seconds\": %.4f, \"send_seconds\": %.4f, "
           "\"mb_per_s\": %.1f, \"sink_reads\": %lld, \"ok\": %s}\n",
           total, confirmed, secs, t_sent - t0, total / secs / 1e6, reads,
           (unsigned long long)confirmed == total ? "true" : "false");
    return (unsigned long long)confirmed == total ? 0 : 1;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN); /* a peer that resets must not kill the sink */
    if (argc >= 3 && strcmp(argv[1], "sink") == 0)
        return sink(atoi(argv[2]), argc > 3 ? argv[3] : NULL);
    if (argc >= 4 && strcmp(argv[1], "send") == 0)
        return sendbulk(atoi(argv[2]), strtoull(argv[3], NULL, 10),
                        argc > 4 ? (size_t)strtoul(argv[4], NULL, 10) : 256 * 1024);
    fprintf(stderr, "usage: bulk sink PORT [READY_FILE] | bulk send PORT BYTES [CHUNK]\n");
    return 2;
}
