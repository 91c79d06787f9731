from llmbatch.engine.cuda_graphs import capture_sizes, fastest_at_least, prompt_capture_sizes


def test_a_step_runs_the_fastest_graph_that_fits_it():
    sizes = [1, 2, 4, 8, 16, 32, 48]
    # 16 got a slow matmul kernel: steps of 9-16 sequences run padded to 32; 1% apart is noise
    seconds = [5.0, 4.95, 5.1, 5.1, 9.0, 6.0, 6.5]
    assert fastest_at_least(sizes, seconds) == [1, 2, 4, 8, 32, 32, 48]
    # 2 is 10% faster than 1
    assert fastest_at_least(sizes, [5.5, *seconds[1:]])[:2] == [2, 2]


def test_capture_sizes_cover_every_batch_up_to_the_max():
    sizes = capture_sizes(40)
    assert sizes == [1, 2, 4, 8, 16, 32, 40]
    assert fastest_at_least(sizes, [1.0] * len(sizes)) == sizes


def test_prompt_step_sizes_pad_little_and_stop_at_the_cap():
    sizes = prompt_capture_sizes(1024)
    assert sizes[0] == 16 and sizes[-1] == 1024
    # a step of n tokens runs in the smallest captured size >= n: padded by less than a quarter
    for n in range(17, 1025):
        padded = next(size for size in sizes if size >= n)
        assert padded - n < max(16, n / 4), n
    assert prompt_capture_sizes(100)[-1] == 96
    assert prompt_capture_sizes(0) == []
