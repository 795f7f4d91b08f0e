/* One-connection latency client for bench_latency.py.
 *
 * Usage: latency_client CYCLES BLOCK SETTLE WARMUP SEED PORT...
 *
 * Sends "GET /items/1" to the servers on 127.0.0.1:PORT, one request at a time. Each cycle visits
 * every server once, in a fresh random order, and sends it SETTLE untimed requests (its caches
 * warm again after the other servers ran) and then BLOCK timed ones. Before the first cycle every
 * server gets WARMUP untimed requests. Prints, per server, one line with its CYCLES * BLOCK latencies
 * in nanoseconds: from writing the request to having read the whole response, as wrk times it. A server that answers "Connection: close" (gunicorn's sync worker) is
 * reconnected before its next request, outside the timing, as in wrk. Written in C so that the
 * client's own cost per request is a few microseconds and does not dilute the servers'
 * difference. Exits non-zero on any error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SERVERS 16
#define BUF 65536

typedef struct {
    int port;
    int fd;
    char request[128];
    size_t request_len;
    long long *lat;
} server_t;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* One request; returns its latency in ns. */
static long long one(server_t *s) {
    static char buf[BUF + 1];
    /* A kept-alive connection the server closed while it sat idle (uvicorn closes one after 5 s,
     * and a cycle over several servers can leave it that long under a busy host) fails its
     * request with no byte of a response: reconnect and send again, timing from the new send,
     * as a client reusing connections from a pool does. Once per request; a new connection that
     * fails is an error. */
    int fresh = s->fd < 0;
    if (fresh) s->fd = connect_to(s->port);
    long long start = now_ns();
    ssize_t sent = send(s->fd, s->request, s->request_len, MSG_NOSIGNAL);
    size_t got = 0;
    char *end = NULL;
    while (end == NULL) {
        ssize_t n = sent == (ssize_t)s->request_len ? recv(s->fd, buf + got, BUF - got, 0) : -1;
        if (n <= 0 && got == 0 && !fresh) {
            close(s->fd);
            s->fd = connect_to(s->port);
            fresh = 1;
            start = now_ns();
            sent = send(s->fd, s->request, s->request_len, MSG_NOSIGNAL);
            continue;
        }
        if (sent != (ssize_t)s->request_len) die("send");
        if (n <= 0) die("recv (headers)");
        got += (size_t)n;
        buf[got] = 0;
        end = strstr(buf, "\r\n\r\n");
        if (end == NULL && got == BUF) {
            fprintf(stderr, "response headers too large\n");
            exit(2);
        }
    }
    size_t head = (size_t)(end - buf) + 4;
    *end = 0; /* headers as a C string for the searches below */
    char *cl = strcasestr(buf, "\r\ncontent-length:");
    int chunked = strcasestr(buf, "\r\ntransfer-encoding: chunked") != NULL;
    int close_after = strcasestr(buf, "\r\nconnection: close") != NULL;
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
        fprintf(stderr, "unexpected response: %.80s\n", buf);
        exit(2);
    }
    if (cl != NULL) {
        size_t length = strtoul(cl + 17, NULL, 10);
        size_t body = got - head;
        while (body < length) {
            ssize_t n = recv(s->fd, buf, BUF, 0);
            if (n <= 0) die("recv (body)");
            body += (size_t)n;
        }
    } else if (chunked) {
        /* gunicorn answers a body of no length (Django's JsonResponse without
         * CommonMiddleware) in chunks, then closes: the response ends at the last chunk, as
         * wrk reads it; what the server does before it closes is not the request's latency.
         * The end is the last-chunk line after a chunk's CRLF (or first): no trailers, and no
         * body that itself ends in that sequence at a read's end, which holds for these apps. */
        static const char last[] = "\r\n0\r\n\r\n";
        char tail[sizeof last] = "\r\n"; /* the headers' end stands for a chunk's CRLF */
        size_t kept = 2;
        char *body = buf + head;
        size_t length = got - head;
        for (;;) {
            for (size_t i = 0; i < length; i++) {
                if (kept == sizeof last - 1) {
                    memmove(tail, tail + 1, kept - 1);
                    kept--;
                }
                tail[kept++] = body[i];
            }
            if (kept == sizeof last - 1 && memcmp(tail, last, kept) == 0) break;
            ssize_t n = recv(s->fd, buf, BUF, 0);
            if (n <= 0) die("recv (chunked body)");
            body = buf;
            length = (size_t)n;
        }
    } else if (close_after) {
        /* No length and not chunked: the body ends at EOF. */
        ssize_t n;
        while ((n = recv(s->fd, buf, BUF, 0)) > 0) {
        }
        if (n < 0) die("recv (body to EOF)");
    } else {
        fprintf(stderr, "no content-length, chunks or connection: close: %.80s\n", buf);
        exit(2);
    }
    long long elapsed = now_ns() - start;
    if (close_after) {
        if (chunked) { /* read to the server's close, untimed, before the next request */
            ssize_t n;
            while ((n = recv(s->fd, buf, BUF, 0)) > 0) {
            }
        }
        close(s->fd);
        s->fd = -1;
    }
    return elapsed;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s CYCLES BLOCK SETTLE WARMUP SEED PORT...\n", argv[0]);
        return 2;
    }
    long cycles = atol(argv[1]);
    long block = atol(argv[2]);
    long settle = atol(argv[3]);
    long warmup = atol(argv[4]);
    srand48(atol(argv[5]));
    int count = argc - 6;
    long samples = cycles * block;
    if (count > MAX_SERVERS || cycles <= 0 || block <= 0 || settle < 0 || warmup < 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    server_t servers[MAX_SERVERS];
    int order[MAX_SERVERS];
    for (int i = 0; i < count; i++) {
        server_t *s = &servers[i];
        s->port = atoi(argv[6 + i]);
        s->fd = -1;
        s->request_len = (size_t)snprintf(s->request, sizeof s->request,
                                          "GET /items/1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                                          s->port);
        s->lat = malloc(sizeof(long long) * (size_t)samples);
        if (s->lat == NULL) die("malloc");
        order[i] = i;
    }
    for (int i = 0; i < count; i++)
        for (long w = 0; w < warmup; w++) one(&servers[i]);
    for (long c = 0; c < cycles; c++) {
        for (int i = count - 1; i > 0; i--) { /* Fisher-Yates */
            int j = (int)(drand48() * (i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int k = 0; k < count; k++) {
            server_t *s = &servers[order[k]];
            for (long w = 0; w < settle; w++) one(s);
            for (long b = 0; b < block; b++) s->lat[c * block + b] = one(s);
        }
    }
    for (int i = 0; i < count; i++) {
        for (long c = 0; c < samples; c++) printf(c ? " %lld" : "%lld", servers[i].lat[c]);
        printf("\n");
    }
    return 0;
}
