"""Column names shared by every stage. Stages name what they need and produce with these constants."""

# questions
QUESTION_ID = "question_id"
QUESTION = "question"  # the user-facing problem text
ANSWER = "answer"  # reference final answer (string)
FAMILY = "family"  # task family / source name
DIFFICULTY = "difficulty"  # integer difficulty knob (synthetic world) or -1
TESTS = "tests"  # canonical JSON test suite of a code question ("" for math: graded by answer)
PROMPT = "prompt"  # the user message sent to a model: the question through its source's prompt template
ANSWER_FORMAT = "answer_format"  # optional, on suite rows: "choice" grades by option letter ("" or absent: default)

# generations
TEACHER = "teacher"
SAMPLE_INDEX = "sample_index"
SEED = "seed"
COMPLETION = "completion"  # generated assistant text
NUM_TOKENS = "num_tokens"  # completion tokens as counted by the engine
PROMPT_TOKENS = "prompt_tokens"  # prompt tokens of the request as counted by the engine (-1: unknown)
FINISH_REASON = "finish_reason"
ERROR = "error"  # empty string when the request succeeded
ROW_ORDER = (QUESTION_ID, TEACHER, SAMPLE_INDEX)  # the canonical order of generation rows (one per key)

# verdicts
FORMAT_OK = "format_ok"
CORRECT = "correct"
REASON = "reason"  # why a row was rejected ("" when kept)
PREDICTED = "predicted"  # extracted final answer

# LLM judge (verify.judge; see curation.judge)
JUDGE_VERDICT = "judge_verdict"  # correct | incorrect | unparsed | error; "" when the row was not judged
JUDGE_DETAIL = "judge_detail"  # why a verdict is unparsed or an error
JUDGE_OUTPUT = "judge_output"  # the judge's text
JUDGE_TOKENS = "judge_tokens"  # completion tokens of the judge's answer (-1: unknown)
JUDGE_CALLED = "judge_called"  # the judge was called for this row now (False: answered from the store)
MATH_VERIFY_CORRECT = "math_verify_correct"  # math-verify's own verdict, before the judge
MATH_VERIFY_DECIDED = "math_verify_decided"  # math-verify extracted an answer and the reference is math

# curation
PASS_RATE = "pass_rate"
SELECTION_DISTANCE = "selection_distance"  # min distance to the other selected trajectories
NUM_SAMPLES = "n"  # student samples graded for a question (pass-rate table)
NUM_CORRECT = "n_correct"  # of which correct

# rejects (every rejects file row carries both)
STAGE = "stage"  # the pipeline stage that rejected the row; REASON says why

# corpus
MESSAGES = "messages"

QUESTION_COLUMNS = [QUESTION_ID, QUESTION, ANSWER, FAMILY, DIFFICULTY, TESTS, PROMPT]
GENERATION_COLUMNS = [*QUESTION_COLUMNS, TEACHER, SAMPLE_INDEX, SEED, COMPLETION, NUM_TOKENS, FINISH_REASON, ERROR,
                      PROMPT_TOKENS]
JUDGE_COLUMNS = [JUDGE_VERDICT, JUDGE_DETAIL, JUDGE_OUTPUT, JUDGE_TOKENS, JUDGE_CALLED, MATH_VERIFY_CORRECT,
                 MATH_VERIFY_DECIDED]
