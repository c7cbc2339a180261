/* Subcommand entry points; each returns the process exit status. app/main.c dispatches. */
#ifndef KVS_COMMANDS_H
#define KVS_COMMANDS_H

int kvs_cmd_generate(int argc, char **argv);
int kvs_cmd_run(int argc, char **argv);
int kvs_cmd_replay(int argc, char **argv);
int kvs_cmd_eval(int argc, char **argv);
int kvs_cmd_calibrate(int argc, char **argv);
int kvs_cmd_bench(int argc, char **argv);
int kvs_cmd_trace(int argc, char **argv);
int kvs_cmd_lesson(int argc, char **argv);

#endif
