/*
 * verify.h - `hookrelay verify`: checks one received webhook's Standard Webhooks v1
 * signature offline and, when it does not match, says exactly why (secret form, header
 * form, timestamp window, or the signed content and the likely mistake).
 *
 * Single-threaded; runs before and instead of the server.
 */
#ifndef HOOKRELAY_VERIFY_H
#define HOOKRELAY_VERIFY_H

/* argv[0] is "verify", flags follow. Prints the verdict on stdout. Returns the process
 * exit status: 0 valid, 1 not valid (with the reason), 2 usage error. */
int verify_main(int argc, char **argv);

#endif
