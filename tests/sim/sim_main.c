/*
 * sim_main.c - command line of the Raft simulation.
 *
 *   raft_sim [--seed N] [--runs R] [--steps S] [--nodes 3|5]
 *            [--profile mixed|random|churn] [--expect-violation] [-v]
 *
 * Run i uses seed N+i; with no --nodes, even seeds simulate 3 nodes and odd
 * seeds 5. A failing run prints its seed, the invariant that broke and the
 * command that replays it; the last line is "N passed, N failed".
 * --expect-violation inverts the verdict for the negative control: the
 * exit status is 0 only if at least one run broke a safety invariant.
 *
 * The default seed is fixed so that CI runs the same 10,000 runs every
 * time; pass another --seed (and more --runs/--steps) to explore.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/sim/sim.h"

#define DEFAULT_SEED 1
#define DEFAULT_RUNS 10000
#define DEFAULT_STEPS 8000
/* Failures printed in full; the rest are only counted. */
#define FAILURES_SHOWN_MAX 20

const char *sim_fail_name(int kind) {
    static const char *const names[SIM_FAIL_KINDS_] = {"ok",
                                                       "election safety",
                                                       "log matching",
                                                       "leader completeness",
                                                       "state machine safety",
                                                       "read safety",
                                                       "durability",
                                                       "update contract",
                                                       "driver error",
                                                       "liveness"};
    return kind >= 0 && kind < SIM_FAIL_KINDS_ ? names[kind] : "?";
}

bool sim_fail_is_safety(int kind) {
    return kind != SIM_OK && kind != SIM_FAIL_LIVENESS && kind != SIM_FAIL_DRIVER;
}

static void usage(void) {
    fprintf(stderr,
            "usage: raft_sim [--seed N] [--runs R] [--steps S] [--nodes 3|5]\n"
            "                [--profile mixed|random|churn] [--expect-violation] [-v]\n"
            "  --seed N    first run's seed (default %d); run i uses N+i\n"
            "  --runs R    number of runs (default %d)\n"
            "  --steps S   events in each run's fault phase (default %d)\n"
            "  --nodes K   cluster size, 3 or 5 (default: 3 for even seeds, 5 for odd)\n"
            "  --profile P random: fault weights drawn per run; churn: leaders die young,\n"
            "              one entry per message (figure 8); mixed (default): 1 in 4 churn\n"
            "  --expect-violation  succeed only if some run breaks a safety invariant\n"
            "  -v          trace every event (use with --runs 1)\n",
            DEFAULT_SEED, DEFAULT_RUNS, DEFAULT_STEPS);
}

static bool parse_u64(const char *s, uint64_t *out) {
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    if (!s[0] || *end) return false;
    *out = v;
    return true;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    uint64_t seed = DEFAULT_SEED, runs = DEFAULT_RUNS;
    struct sim_run_opts o = {.steps = DEFAULT_STEPS, .nodes = 0, .verbose = false};
    bool expect = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        uint64_t v = 0;
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--seed") && has_val && parse_u64(argv[i + 1], &v)) {
            seed = v;
            i++;
        } else if (!strcmp(a, "--runs") && has_val && parse_u64(argv[i + 1], &v)) {
            runs = v;
            i++;
        } else if (!strcmp(a, "--steps") && has_val && parse_u64(argv[i + 1], &v)) {
            o.steps = v;
            i++;
        } else if (!strcmp(a, "--nodes") && has_val && parse_u64(argv[i + 1], &v) &&
                   (v == 3 || v == 5)) {
            o.nodes = (int)v;
            i++;
        } else if (!strcmp(a, "--profile") && has_val) {
            const char *pv = argv[++i];
            if (!strcmp(pv, "mixed")) {
                o.profile = SIM_PROFILE_MIXED;
            } else if (!strcmp(pv, "random")) {
                o.profile = SIM_PROFILE_RANDOM;
            } else if (!strcmp(pv, "churn")) {
                o.profile = SIM_PROFILE_CHURN;
            } else {
                usage();
                return 2;
            }
        } else if (!strcmp(a, "--expect-violation")) {
            expect = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o.verbose = true;
        } else {
            usage();
            return 2;
        }
    }

    char extra[96] = "";
    if (o.steps != DEFAULT_STEPS) snprintf(extra, sizeof(extra), " --steps %" PRIu64, o.steps);
    if (o.nodes)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), " --nodes %d", o.nodes);
    if (o.profile != SIM_PROFILE_MIXED)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), " --profile %s",
                 o.profile == SIM_PROFILE_CHURN ? "churn" : "random");

    uint64_t passed = 0, failed = 0, safety = 0, by_kind[SIM_FAIL_KINDS_] = {0};
    struct sim_stats tot;
    memset(&tot, 0, sizeof(tot));
    uint64_t heal_leader_max = 0, heal_commit_max = 0, runs_old_term = 0;
    double t0 = now_s();
    for (uint64_t i = 0; i < runs; i++) {
        uint64_t s = seed + i;
        struct sim_stats st;
        char msg[SIM_FAIL_MSG_MAX];
        int kind = sim_run(s, &o, &st, msg, sizeof(msg));
        tot.steps += st.steps;
        tot.msgs_sent += st.msgs_sent;
        tot.msgs_dropped += st.msgs_dropped;
        tot.msgs_duped += st.msgs_duped;
        tot.crashes += st.crashes;
        tot.restarts += st.restarts;
        tot.elections += st.elections;
        tot.proposals += st.proposals;
        tot.proposals_applied += st.proposals_applied;
        tot.reads += st.reads;
        tot.reads_served += st.reads_served;
        tot.snaps_sent += st.snaps_sent;
        tot.snaps_installed += st.snaps_installed;
        tot.compactions += st.compactions;
        tot.conf_changes_applied += st.conf_changes_applied;
        tot.conf_proposed += st.conf_proposed;
        tot.transfers += st.transfers;
        tot.partitions += st.partitions;
        tot.traps_fired += st.traps_fired;
        tot.old_term_commits += st.old_term_commits;
        if (st.old_term_commits) runs_old_term++;
        if (kind == SIM_OK) {
            passed++;
            if (st.heal_ticks_leader > heal_leader_max) heal_leader_max = st.heal_ticks_leader;
            if (st.heal_ticks_commit > heal_commit_max) heal_commit_max = st.heal_ticks_commit;
            continue;
        }
        failed++;
        by_kind[kind]++;
        if (sim_fail_is_safety(kind)) safety++;
        if (failed <= FAILURES_SHOWN_MAX) {
            printf("FAIL seed %" PRIu64 ": %s: %s\n", s, sim_fail_name(kind), msg);
            printf("  replay: raft_sim --seed %" PRIu64 " --runs 1%s -v\n", s, extra);
        }
        fflush(stdout);
    }
    double secs = now_s() - t0;
    static const char *const profiles[] = {"mixed", "random", "churn"};
    printf("raft_sim: seeds %" PRIu64 "..%" PRIu64 ", %" PRIu64 " steps each, %s nodes, %s"
           " profile, %.1fs (%.2fms/run)\n",
           seed, seed + runs - 1, o.steps,
           o.nodes == 3   ? "3"
           : o.nodes == 5 ? "5"
                          : "3 and 5",
           profiles[o.profile], secs, runs ? secs * 1000.0 / (double)runs : 0.0);
    printf("  events %" PRIu64 ", messages %" PRIu64 " (dropped %" PRIu64 ", duplicated %" PRIu64
           "), crashes %" PRIu64 " (%" PRIu64 " inside an update), restarts %" PRIu64
           ", partitions %" PRIu64 "\n",
           tot.steps, tot.msgs_sent, tot.msgs_dropped, tot.msgs_duped, tot.crashes, tot.traps_fired,
           tot.restarts, tot.partitions);
    printf("  leaders elected %" PRIu64 ", proposals %" PRIu64 " (applied %" PRIu64
           "), reads %" PRIu64 " (served %" PRIu64 "), conf changes %" PRIu64 " (applied %" PRIu64
           " times), transfers %" PRIu64 ", snapshots sent %" PRIu64 " (installed %" PRIu64
           "), compactions %" PRIu64 "\n",
           tot.elections, tot.proposals, tot.proposals_applied, tot.reads, tot.reads_served,
           tot.conf_proposed, tot.conf_changes_applied, tot.transfers, tot.snaps_sent,
           tot.snaps_installed, tot.compactions);
    printf("  after healing: leader within %" PRIu64 " ticks, proposals applied everywhere within"
           " %" PRIu64 " more ticks (worst passing run)\n",
           heal_leader_max, heal_commit_max);
    printf("  leader commits of earlier-term entries by counting: %" PRIu64 " in %" PRIu64
           " runs\n",
           tot.old_term_commits, runs_old_term);
    if (failed) {
        printf("  failures:");
        for (int k = 1; k < SIM_FAIL_KINDS_; k++)
            if (by_kind[k]) printf(" %s %" PRIu64 ";", sim_fail_name(k), by_kind[k]);
        printf("\n");
    }
    if (expect)
        printf("  expecting a safety violation: %s (%" PRIu64 " runs broke safety)\n",
               safety ? "found" : "NOT FOUND", safety);
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", passed, failed);
    if (expect) return safety ? 0 : 1;
    return failed ? 1 : 0;
}
